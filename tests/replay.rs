//! What an attacker who captured signed messages can do with them after the
//! daemons restart (nothing), and what a client shows of answers it cannot
//! verify (never `ok`). The tests play the attacker with the library itself:
//! they sign what a capture would hold, with the keys of the deployment.

use crate::util::*;
use serde_json::{json, Value};
use service_mgr::protocol::{
    self as p, Announce, AnnounceKind, Dispatch, MgmtBody, MgmtRequest, RequestBody,
    ServiceRequest, SignedAnnounce,
};
use service_mgr::security::{self, KeyPair, Purpose, Role};
use std::path::Path;
use std::time::{Duration, Instant};

fn load(path: &str) -> KeyPair {
    KeyPair::load(Path::new(path)).unwrap()
}

/// The body a client signs for `cmd service` on `topic`, dated now.
fn body(key: &KeyPair, req: &ServiceRequest) -> RequestBody {
    RequestBody::for_request(
        req,
        uuid::Uuid::new_v4().simple().to_string(),
        service_mgr::clock::now_ms(),
        key.public().to_string(),
    )
}

/// A client's signed request frame, as the frontend receives it.
fn signed_request(key: &KeyPair, cmd: &str, service: &str, topic: &str) -> Vec<u8> {
    let mut req = ServiceRequest::new(cmd, service, topic);
    let b = body(key, &req);
    req.auth = Some(security::sign(key, Purpose::Request, &b));
    p::encode(&req)
}

/// A signed shutdown (`manager.shutdown`, or `agent.shutdown` for `node`).
fn signed_shutdown(key: &KeyPair, cmd: &str, node: Option<&str>) -> Vec<u8> {
    let mut req = MgmtRequest::new(cmd);
    let b = MgmtBody {
        cmd: cmd.into(),
        id: uuid::Uuid::new_v4().simple().to_string(),
        ts: service_mgr::clock::now_ms(),
        node: node.map(str::to_owned),
    };
    req.auth = Some(security::sign(key, Purpose::Request, &b));
    p::encode(&req)
}

fn reply(endpoint: &str, frame: &[u8]) -> Value {
    json(&req_raw(endpoint, frame))
}

/// Wait `secs` for more calls than `n` of the fake service; the calls seen.
fn calls_after(dir: &Path, n: usize, secs: f64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        let c = calls(dir);
        if c.len() > n || Instant::now() >= deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A 0.1-compatible manager (`allow_unsigned`: plaintext sockets, where a
/// captured message can be sent again by anyone who reaches the ports),
/// stopped and started again on the same ports and state.
fn restart_compat(mgr: &mut Proc) -> Proc {
    let endpoints = MANAGER_ENDPOINTS.map(|k| format!("{k}={}", mgr.ep(k)));
    assert_eq!(mgr.signal_and_wait(libc::SIGTERM, 10).code(), Some(0));
    let state = format!("state_dir={:?}", mgr.pki.as_ref().unwrap().path("state"));
    let mut args = vec!["daemon", "-D", "-f", "/dev/null", "-O", state.as_str()];
    args.extend(["-O", "allow_unsigned=true"]);
    for e in &endpoints {
        args.extend(["-O", e.as_str()]);
    }
    let mut again = spawn_ready(&args);
    again.pki = mgr.pki.take();
    again
}

/// Before the replay journal, a `restart nginx` captured and re-sent after the
/// manager and the agent restarted ran again on that agent. (On CURVE sockets a
/// request must come on its signer's connection; a 0.1-compatible manager's are
/// plaintext, and agents check requests themselves whoever relays them.)
#[test]
fn request_replayed_after_manager_and_agent_restart_does_not_run() {
    with_timeout(90, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager_compat(&[]);
        let mut a = agent(&mgr, "n1", &fake, &[]);
        let alice = load(&mgr.pki.as_ref().unwrap().client_key());
        let captured = signed_request(&alice, "restart", "nginx", "n1");
        let first = reply(&mgr.ep("frontend_endpoint"), &captured);
        assert!(first["uuid"].is_string(), "{first}");
        assert_eq!(calls_after(dir.path(), 0, 10.0), ["nginx restart"]);

        assert_eq!(a.signal_and_wait(libc::SIGTERM, 10).code(), Some(0));
        let mgr2 = restart_compat(&mut mgr);
        let _a2 = agent(&mgr2, "n1", &fake, &[]);
        let again = reply(&mgr2.ep("frontend_endpoint"), &captured);
        assert_eq!(again["success"], -1, "the replay was accepted: {again}");
        let msg = again["msg"].as_str().unwrap_or_default();
        assert!(msg.contains("replayed"), "{again}");
        assert_eq!(calls_after(dir.path(), 1, 3.0), ["nginx restart"]);
    });
}

/// The agent on its own: a dispatch it ran, published to it again after it
/// restarted (by a manager that lost its state, or an impostor on the
/// backend), ran again before its journal.
#[test]
fn dispatch_replayed_to_a_restarted_agent_does_not_run() {
    with_timeout(90, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        security::keygen(
            &dir.path().join("tester.key"),
            Role::Client,
            "tester",
            false,
        )
        .unwrap();
        std::fs::copy(
            dir.path().join("tester.key.pub"),
            dir.path().join("authorized_clients"),
        )
        .unwrap();
        let alice = load(&dir.path().join("tester.key").display().to_string());
        let ctx = zmq::Context::new();
        let (backend, backend_ep) = bind_loopback(&ctx, zmq::XPUB);
        backend.set_xpub_verbose(true).unwrap();
        let (_sink, sink_ep) = bind_loopback(&ctx, zmq::PULL);
        let req = ServiceRequest::new("restart", "nginx", "n1");
        let dispatch = Dispatch {
            cmd: req.cmd.clone(),
            service: req.service.clone(),
            topic: req.topic.clone(),
            uuid: uuid::Uuid::new_v4().simple().to_string(),
            v: Some(2),
            auth: Some(security::sign(
                &alice,
                Purpose::Request,
                &body(&alice, &req),
            )),
        };
        let frame = p::encode(&dispatch);
        // Published until it ran once (a subscriber joins late), then for 2 s more.
        let publish_until = |secs: f64, stop_at: Option<usize>| {
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < deadline {
                while recv_within(&backend, 0).is_some() {}
                backend
                    .send_multipart([b"n1\0".as_slice(), frame.as_slice()], 0)
                    .unwrap();
                if stop_at.is_some_and(|n| calls(dir.path()).len() >= n) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        let policy = ["-O", ALLOW_ALL];
        let mut a = agent_at(&backend_ep, &sink_ep, "n1", &fake, dir.path(), &policy);
        publish_until(15.0, Some(1));
        assert_eq!(calls_after(dir.path(), 0, 5.0), ["nginx restart"]);
        assert_eq!(a.signal_and_wait(libc::SIGTERM, 10).code(), Some(0));
        let _a2 = agent_at(&backend_ep, &sink_ep, "n1", &fake, dir.path(), &policy);
        publish_until(3.0, None);
        assert_eq!(calls_after(dir.path(), 1, 1.0), ["nginx restart"]);
    });
}

/// Before the replay journal, a captured `agent.shutdown` re-sent after the
/// agent restarted stopped it again.
#[test]
fn agent_shutdown_replayed_after_restart_is_refused() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let mut a = agent(&mgr, "n1", &fake, &[]);
        let alice = load(&mgr.pki.as_ref().unwrap().client_key());
        let captured = signed_shutdown(&alice, p::AGENT_SHUTDOWN, Some("n1"));
        let r = reply(&a.ep("mgmt_endpoint"), &captured);
        assert_eq!(r["success"], 0, "{r}");
        assert_eq!(a.wait_exit(10).and_then(|s| s.code()), Some(0));
        let mut a2 = agent(&mgr, "n1", &fake, &[]);
        let r = reply(&a2.ep("mgmt_endpoint"), &captured);
        assert_eq!(r["success"], -1, "the replay was obeyed: {r}");
        assert!(r["msg"].as_str().unwrap().contains("replayed"), "{r}");
        assert!(a2.wait_exit(1).is_none(), "the agent stopped");
    });
}

/// A goodbye of `node`'s `instance`, signed with its key now: what a capture
/// of that instance's `agent.bye` holds.
fn signed_bye(key: &KeyPair, node: &str, instance: &str) -> Vec<u8> {
    let mut a = Announce {
        kind: AnnounceKind::Bye,
        v: 2,
        node: node.into(),
        instance: instance.into(),
        system: "Linux".into(),
        release: "r".into(),
        os_version: "v".into(),
        topics: vec!["any".into(), node.into()],
        agent_version: "0.2.0".into(),
        started_ms: service_mgr::clock::now_ms(),
        interval_ms: 2000,
        running: 0,
        auth: None,
        uuid: p::ANNOUNCE_UUID.into(),
    };
    let signed = SignedAnnounce {
        announce: a.clone(),
        key: key.public().to_string(),
        ts: service_mgr::clock::now_ms(),
    };
    a.auth = Some(security::sign(key, Purpose::Announce, &signed));
    p::encode(&a)
}

fn instance_of(mgr: &Proc, node: &str) -> String {
    let (_, agents) = agent_listed(mgr, node, "up");
    agents["result"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["node"] == node)
        .and_then(|a| a["instance"].as_str())
        .unwrap_or_else(|| panic!("{node} not listed: {agents}"))
        .to_owned()
}

/// Push `bye` to the sink 10×/s for `secs`; how many times `node` was not
/// listed up when looked at in between.
fn push_byes(mgr: &Proc, bye: &[u8], node: &str, secs: u64) -> usize {
    let ctx = zmq::Context::new();
    let push = connect(&ctx, zmq::PUSH, &mgr.ep("sink_endpoint"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut down = 0;
    while Instant::now() < deadline {
        // Not yet connected (the handshake is under way): that push is skipped.
        let _ = push.send(bye, zmq::DONTWAIT);
        std::thread::sleep(Duration::from_millis(100));
        if !agent_listed(mgr, node, "up").0 {
            down += 1;
        }
    }
    down
}

/// Before announcements were ordered, a sniffed `agent.bye` of a node's
/// previous instance, pushed to the sink 10×/s, marked the node stopped
/// (no_response to 38 of 39 requests), and after a manager restart too. (On
/// CURVE an announcement must come on its node's own connection; a
/// 0.1-compatible manager's sink is plaintext, open to anyone.)
#[test]
fn bye_of_an_earlier_instance_replayed_does_not_stop_the_node() {
    with_timeout(90, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager_compat(&[]);
        let mut a1 = agent(&mgr, "n1", &fake, &[]);
        let key = load(&mgr.pki.as_ref().unwrap().agent_key("n1"));
        let old = instance_of(&mgr, "n1");
        let captured = signed_bye(&key, "n1", &old);
        assert_eq!(a1.signal_and_wait(libc::SIGTERM, 10).code(), Some(0));
        let _a2 = agent(&mgr, "n1", &fake, &[]);
        assert_ne!(instance_of(&mgr, "n1"), old);
        assert_eq!(
            push_byes(&mgr, &captured, "n1", 2),
            0,
            "the replayed bye was believed"
        );
        let out = Client::new(&mgr)
            .nodes("n1")
            .cmd("status")
            .service("cron")
            .format("json")
            .output();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The manager restarted: what ended before is still refused.
        let mgr2 = restart_compat(&mut mgr);
        wait_registered(&mgr2, "n1");
        assert_eq!(
            push_byes(&mgr2, &captured, "n1", 2),
            0,
            "believed after a restart"
        );
    });
}

/// Before the fix, a fake manager (answering `expected: ["web1"]` with no key
/// for web1, then publishing an unsigned `ok`) made the client print `web1 ok`
/// and exit 0.
#[test]
fn fake_manager_unsigned_ok_is_not_shown_as_ok() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        security::keygen(&key, Role::Client, "alice", false).unwrap();
        let ctx = zmq::Context::new();
        let (router, frontend) = bind_loopback(&ctx, zmq::ROUTER);
        let (publisher, result_ep) = bind_loopback(&ctx, zmq::PUB);
        let port: u16 = result_ep.rsplit(':').next().unwrap().parse().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let fake = std::thread::spawn(move || {
            let uuid = "0123456789abcdef0123456789abcdef";
            let mut accepted = false;
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(mut frames) = recv_within(&router, 50) {
                    let accept = json!({"uuid": uuid, "port": port, "v": 2,
                        "expected": ["web1"], "unregistered": 0, "agent_keys": {}});
                    frames.pop();
                    frames.push(accept.to_string().into_bytes());
                    router.send_multipart(frames, 0).unwrap();
                    accepted = true;
                }
                if accepted {
                    let fake_ok = json!({"msg": "FAKE: nginx restart done", "node": "web1",
                        "uuid": uuid, "status": "ok", "v": 2,
                        "result": {"node": "web1", "service": "nginx", "returncode": 0,
                                   "stdout": "FAKE: nginx restart done", "stderr": ""}});
                    publisher
                        .send_multipart([uuid.as_bytes(), fake_ok.to_string().as_bytes()], 0)
                        .unwrap();
                }
            }
        });
        for format in ["table", "json", "legacy"] {
            // Plaintext, as to a 0.1-compatible manager (a port reused from
            // another test's manager must not make the harness pin its key).
            let out = Client::at(&frontend)
                .env("SERVICE_MGR_MANAGER_KEY", "plaintext")
                .key(key.to_str().unwrap())
                .topic("web1")
                .cmd("restart")
                .service("nginx")
                .wait("3")
                .format(format)
                .output();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_ne!(out.status.code(), Some(0), "{format}: {stdout}\n{stderr}");
            assert!(
                stdout.contains("unverified"),
                "{format}: {stdout}\n{stderr}"
            );
            assert!(!stdout.contains("FAKE"), "{format}: {stdout}");
            if format == "json" {
                let doc = json(&out.stdout);
                assert_eq!(doc["results"][0]["status"], "unverified", "{doc}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        fake.join().unwrap();
    });
}
