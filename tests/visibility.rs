//! What the operator sees when an agent cannot be reached the ordinary way:
//! an agent whose clock is off, and clients waiting through a manager restart.

use crate::util::*;

use serde_json::{json, Value};
use service_mgr::protocol::{self as p, Announce, AnnounceKind};
use service_mgr::security::{self, KeyPair, Purpose};

/// Each node's status in a client report, sorted.
fn outcome(doc: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = doc["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {doc}"))
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap_or("").to_owned(),
                r["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A hello of `node` signed with `key`, its timestamp `ahead_ms` ahead of now.
fn hello_ahead(key: &KeyPair, node: &str, ahead_ms: u64) -> Announce {
    let mut hello = Announce {
        kind: AnnounceKind::Hello,
        v: p::PROTOCOL_VERSION,
        node: node.into(),
        instance: uuid::Uuid::new_v4().simple().to_string(),
        system: "Linux".into(),
        release: "6.1".into(),
        os_version: "#1".into(),
        topics: vec!["Linux".into(), "any".into(), node.into()],
        agent_version: "0.2.0".into(),
        started_ms: service_mgr::clock::now_ms(),
        interval_ms: 2000,
        running: 0,
        auth: None,
        uuid: p::ANNOUNCE_UUID.into(),
    };
    let mut body = serde_json::to_value(&hello).unwrap();
    body["key"] = json!(key.public().to_string());
    body["ts"] = json!(service_mgr::clock::now_ms() + ahead_ms);
    hello.auth = Some(security::sign_body(key, Purpose::Announce, &body));
    hello
}

/// An agent 150 s ahead was invisible: refused, never in `mgmt agents`, and
/// `-N s2` said "no such agent … with an accepted key" although it was accepted.
#[test]
fn agent_with_clock_ahead_is_listed_as_clock_skew() {
    with_timeout(60, || {
        let mgr = manager(&[]);
        let pki = mgr.pki.as_ref().unwrap();
        let key_file = pki.agent_key("s2");
        let key = KeyPair::load(std::path::Path::new(&key_file)).unwrap();
        let ctx = zmq::Context::new();
        let push = connect_curve(
            &ctx,
            zmq::PUSH,
            &mgr.ep("sink_endpoint"),
            &mgr.manager_key(),
            &key,
        );
        push.set_linger(2000).unwrap();
        let agents = wait_for(10, "s2 listed as clock_skew", || {
            push.send(p::encode(&hello_ahead(&key, "s2", 150_500)), 0)
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            let (found, agents) = agent_listed(&mgr, "s2", "clock_skew");
            found.then_some(agents)
        });
        let s2 = agents["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["node"] == "s2")
            .unwrap();
        assert_eq!(s2["skew_s"], 150, "{agents}");
        let table = run(&[
            "mgmt",
            "-e",
            &mgr.ep("mgmt_endpoint"),
            "agents",
            "--format",
            "table",
        ]);
        let table = String::from_utf8_lossy(&table.stdout).into_owned();
        assert!(
            table
                .lines()
                .any(|l| l.contains("s2") && l.contains("clock skew (+150 s)")),
            "{table}"
        );
        let (out, doc) = Client::new(&mgr)
            .nodes("s2")
            .cmd("status")
            .service("x")
            .run();
        assert_ne!(out.status.code(), Some(0), "{doc}");
        let text = doc.to_string();
        assert!(
            text.contains(
                "clock skew (+150 s): its announcements are refused; fix its clock (NTP)"
            ),
            "{doc}"
        );
        assert!(!text.contains("no such agent"), "{doc}");
        let _: Value = doc;
    });
}

/// With the default (random) result port, a client waiting through a manager
/// restart reported two late nodes as `no_response`; it must get their answers.
#[test]
fn client_waiting_through_a_manager_restart_gets_late_results() {
    with_timeout(90, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager(&[]);
        let _a1 = agent(&mgr, "n1", &fake, &[]);
        let _a2 = agent(&mgr, "n2", &fake, &[]);
        let running = Client::new(&mgr)
            .nodes("n1,n2")
            .cmd("restart")
            .service("pause-svc")
            .wait("20")
            .spawn();
        // Both agents are running the 1.5 s command when the manager goes.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _mgr2 = restart_manager(&mut mgr);
        let out = running.output();
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let oks = ["n1", "n2"].map(|n| (n.to_owned(), "ok".to_owned()));
        assert_eq!(outcome(&doc), oks, "{doc}");
        assert_eq!(out.status.code(), Some(0), "{doc}");
    });
}
