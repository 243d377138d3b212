//! Only the right people: keys, signed requests and results, authorization at
//! the agent. Every rejection is checked to run nothing and to leave the
//! daemons serving.

use crate::util::*;
use serde_json::{json, Value};
use service_mgr::protocol::{self as p, RequestBody, ServiceRequest};
use service_mgr::security::{self, KeyPair, Purpose, Role};
use std::process::Command;
use std::time::Duration;

/// A signed request frame, with `edit` applied to the signed body first.
fn signed_frame(
    key: &KeyPair,
    node: &str,
    service: &str,
    edit: impl FnOnce(&mut RequestBody),
) -> Vec<u8> {
    let mut req = ServiceRequest::new("status", service, node);
    let mut body = RequestBody::for_request(
        &req,
        uuid::Uuid::new_v4().simple().to_string(),
        service_mgr::clock::now_ms(),
        key.public().to_string(),
    );
    edit(&mut body);
    req.auth = Some(security::sign_body(
        key,
        Purpose::Request,
        &serde_json::to_value(&body).unwrap(),
    ));
    p::encode(&req)
}

fn test_key(mgr: &Proc) -> KeyPair {
    KeyPair::load(std::path::Path::new(
        &mgr.pki.as_ref().unwrap().client_key(),
    ))
    .unwrap()
}

fn reply(mgr: &Proc, frame: &[u8]) -> Value {
    serde_json::from_slice(&req_raw(&mgr.ep("frontend_endpoint"), frame)).unwrap()
}

#[test]
fn unknown_client_is_refused_then_pending_then_accepted() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let stranger = dir.path().join("stranger.key");
        security::keygen(&stranger, Role::Client, "tester", false).unwrap();
        let ep = mgr.ep("frontend_endpoint");
        let out = Client::at(&ep)
            .key(stranger.to_str().unwrap())
            .topic("n1")
            .cmd("status")
            .service("x")
            .output();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("pending") && err.contains("mgmt keys accept"),
            "{err}"
        );
        assert!(calls(dir.path()).is_empty());
        // The operator accepts it on the manager's host, salt-key style.
        let keys_dir = mgr.pki.as_ref().unwrap().path("state/keys");
        let list = run(&["mgmt", "keys", "list", "--keys-dir", &keys_dir]);
        let listed = String::from_utf8_lossy(&list.stdout);
        assert!(listed.contains("pending"), "{listed}");
        let fp = KeyPair::load(&stranger).unwrap().public().fingerprint();
        let acc = run(&["mgmt", "keys", "accept", &fp, "--keys-dir", &keys_dir]);
        assert!(
            acc.status.success(),
            "{}",
            String::from_utf8_lossy(&acc.stderr)
        );
        // The manager picks the change up by itself; the agent trusts the key by name ("tester") in
        // its policy but not in authorized_clients: refused there, and nothing runs.
        std::thread::sleep(Duration::from_millis(600));
        let out = Client::at(&ep)
            .key(stranger.to_str().unwrap())
            .topic("n1")
            .cmd("status")
            .service("x")
            .output();
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["results"][0]["status"], "refused", "{doc}");
        assert!(
            doc["results"][0]["msg"]
                .as_str()
                .unwrap()
                .contains("authorized clients"),
            "{doc}"
        );
        assert!(calls(dir.path()).is_empty());
    });
}

#[test]
fn tampered_replayed_and_expired_requests_are_refused() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let key = test_key(&mgr);
        // Routing fields that differ from the signed body.
        let mut v: Value =
            serde_json::from_slice(&signed_frame(&key, "n1", "sshd", |_| {})).unwrap();
        v["service"] = json!("nginx");
        let r = reply(&mgr, v.to_string().as_bytes());
        assert!(r["msg"].as_str().unwrap().contains("does not match"), "{r}");
        // A signature that does not fit the body.
        let mut v: Value =
            serde_json::from_slice(&signed_frame(&key, "n1", "sshd", |_| {})).unwrap();
        let body = v["auth"]["body"].as_str().unwrap().replace("sshd", "cron");
        v["auth"]["body"] = json!(body);
        v["service"] = json!("cron");
        let r = reply(&mgr, v.to_string().as_bytes());
        assert!(r["msg"].as_str().unwrap().contains("signature"), "{r}");
        // The same signed request twice (a client's retry, or a replay): the
        // first answer again, and it runs once.
        let frame = signed_frame(&key, "n1", "sshd", |_| {});
        let first = reply(&mgr, &frame);
        assert!(first["uuid"].is_string(), "{first}");
        let again = reply(&mgr, &frame);
        assert_eq!(again["uuid"], first["uuid"], "{again}");
        // Signed ten minutes ago.
        let r = reply(&mgr, &signed_frame(&key, "n1", "sshd", |b| b.ts -= 600_000));
        assert!(r["msg"].as_str().unwrap().contains("expired"), "{r}");
        // Unsigned.
        let r = reply(
            &mgr,
            br#"{"cmd": "status", "service": "sshd", "topic": "n1"}"#,
        );
        assert!(
            r["msg"]
                .as_str()
                .unwrap()
                .contains("unsigned request refused"),
            "{r}"
        );
        // Only the one good request ran; the manager still serves.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(calls(dir.path()), ["sshd status"]);
        let (out, _) = Client::new(&mgr)
            .topic("n1")
            .cmd("status")
            .service("x")
            .run();
        assert_eq!(out.status.code(), Some(0));
    });
}

#[test]
fn agents_check_requests_themselves() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        // A manager that relays anything (as a compromised one would).
        let mgr = manager_compat(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let r = reply(
            &mgr,
            br#"{"cmd": "stop", "service": "sshd", "topic": "n1"}"#,
        );
        let uuid = r["uuid"].as_str().unwrap().to_owned();
        // The result is the agent's refusal, kept by the manager.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let record = loop {
            let r = mgmt_req(
                &mgr.ep("mgmt_endpoint"),
                json!({"cmd": "manager.job", "uuid": uuid}),
            );
            if r["result"]["results"][0]["status"] == "refused" {
                break r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no refusal recorded: {r}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let msg = record["result"]["results"][0]["result"]["msg"]
            .as_str()
            .unwrap_or_default();
        assert!(msg.contains("unsigned"), "{record}");
        assert!(
            calls(dir.path()).is_empty(),
            "the agent ran an unsigned request"
        );
    });
}

#[test]
fn policy_refusals_name_the_rule() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let policy = r#"policy=[{name = "monitoring", keys = ["tester"], commands = ["status"], services = ["*"]},
                              {name = "ops", keys = ["tester"], commands = ["*"], services = ["*"], deny = [{commands = ["stop"], services = ["sshd"]}]}]"#;
        let _a = agent(&mgr, "n1", &fake, &["-O", policy]);
        let (_, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("status")
            .service("sshd")
            .run();
        assert_eq!(doc["results"][0]["status"], "ok", "{doc}");
        let (_, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("restart")
            .service("nginx")
            .run();
        assert_eq!(doc["results"][0]["status"], "ok", "{doc}");
        let (out, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("stop")
            .service("sshd")
            .run();
        assert_eq!(out.status.code(), Some(3));
        let r = &doc["results"][0];
        assert_eq!(r["status"], "refused", "{doc}");
        assert!(r["msg"].as_str().unwrap().contains("policy"), "{r}");
        assert_eq!(calls(dir.path()), ["sshd status", "nginx restart"]);
        assert!(std::fs::read_to_string(&_a.log)
            .unwrap()
            .contains("refused"));
    });
}

#[test]
fn unaccepted_agent_gets_nothing_until_accepted() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let mgr = manager(&[]);
        // Its own key, not in the manager's store (and no other key holds its name).
        let (_r, fp) = agent_with_own_key(&mgr, "rogue", dir.path());
        let keys_dir = mgr.pki.as_ref().unwrap().path("state/keys");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let list = String::from_utf8_lossy(
                &run(&["mgmt", "keys", "list", "--keys-dir", &keys_dir]).stdout,
            )
            .into_owned();
            if list
                .lines()
                .any(|l| l.starts_with("pending") && l.contains("rogue"))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rogue key never pending: {list}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (out, doc) = Client::new(&mgr)
            .topic("rogue")
            .cmd("status")
            .service("x")
            .run();
        assert_eq!(out.status.code(), Some(4), "{doc}");
        assert!(
            calls(dir.path()).is_empty(),
            "an unaccepted agent ran a request"
        );
        assert!(
            run(&["mgmt", "keys", "accept", &fp, "--keys-dir", &keys_dir])
                .status
                .success()
        );
        wait_registered(&mgr, "rogue");
        let (out, doc) = Client::new(&mgr)
            .topic("rogue")
            .cmd("status")
            .service("x")
            .run();
        assert_eq!(out.status.code(), Some(0), "{doc}");
        assert_eq!(calls(dir.path()), ["x status"]);
    });
}

#[test]
fn forged_results_are_dropped_and_results_are_sealed() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        // A job that n1 takes 30 s to answer; a forger answers first.
        let key = test_key(&mgr);
        let mut req = ServiceRequest::new("start", "slow-svc", "n1");
        service_mgr::client::sign(&mut req, &key);
        let accepted: Value =
            serde_json::from_slice(&req_raw(&mgr.ep("frontend_endpoint"), &p::encode(&req)))
                .unwrap();
        let uuid = accepted["uuid"].as_str().unwrap().to_owned();
        let ctx = zmq::Context::new();
        let results = format!("tcp://127.0.0.1:{}", accepted["port"]);
        let sub = connect_curve(&ctx, zmq::SUB, &results, &mgr.manager_key(), &key);
        sub.set_subscribe(uuid.as_bytes()).unwrap();
        sub.set_rcvtimeo(1500).unwrap();
        // The forger has a key of its own (a stranger's handshake is admitted
        // where keys get filed), never accepted: nothing it sends counts.
        let forger = KeyPair::generate(Role::Agent, "n1").unwrap();
        let push = connect_curve(
            &ctx,
            zmq::PUSH,
            &mgr.ep("sink_endpoint"),
            &mgr.manager_key(),
            &forger,
        );
        push.set_linger(1000).unwrap();
        let forged = json!({"msg": "Executed service start request", "uuid": uuid, "node": "n1", "status": "ok",
            "result": {"node": "n1", "service": "slow-svc", "returncode": 0, "stdout": "forged", "stderr": "",
                       "system": "Linux", "version": "x"}});
        push.send(forged.to_string().as_bytes(), 0).unwrap();
        // Signed by a key the manager never accepted.
        let other = forger;
        let body = json!({"uuid": uuid, "node": "n1", "status": "ok", "request_id": null,
                          "result": {"msg": "forged", "uuid": uuid}});
        let env = json!({"v": 2, "uuid": uuid, "node": "n1", "status": "ok", "msg": "x",
                         "auth": security::sign_body(&other, Purpose::Result, &body)});
        push.send(env.to_string().as_bytes(), 0).unwrap();
        assert!(
            sub.recv_multipart(0).is_err(),
            "a forged result was published"
        );
        assert!(
            mgr.log_text().contains("result not accepted"),
            "{}",
            mgr.log_text()
        );
        // A real result travels sealed: its output is not readable on the wire.
        let (_, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("status")
            .service("secret-svc")
            .run();
        let job = doc["job"].as_str().unwrap();
        assert_eq!(doc["results"][0]["verified"], true, "{doc}");
        let sub2 = connect_curve(&ctx, zmq::SUB, &results, &mgr.manager_key(), &key);
        sub2.set_subscribe(job.as_bytes()).unwrap();
        sub2.set_rcvtimeo(3000).unwrap();
        // The manager replays a job's results to a new subscriber.
        let frames = sub2
            .recv_multipart(0)
            .expect("the job's result is replayed");
        let wire = String::from_utf8_lossy(&frames[1]);
        assert!(
            wire.contains("sealed") && !wire.contains("secret-svc status ok"),
            "{wire}"
        );
    });
}

#[test]
fn shutdown_needs_a_key_with_that_right() {
    // The management socket is CURVE: who connects decides. Any accepted
    // client key may read (mgmt_read_keys = ["*"]), only mgmt_admin_keys and
    // the manager's own key (root on its host) may shut it down, and a key
    // the manager does not know cannot even connect.
    with_timeout(60, || {
        let mut mgr = manager(&["-O", "mgmt_admin_keys=[]"]);
        let ep = mgr.ep("mgmt_endpoint");
        let key = mgr.pki.as_ref().unwrap().client_key();
        let out = run(&["mgmt", "-e", &ep, "-k", &key, "manager.shutdown"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("may read but not shut down"), "{text}");
        assert!(mgr.alive());
        let out = run(&["mgmt", "-e", &ep, "-k", &key, "status", "--format", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = output(
            Command::new(bin())
                .args(["mgmt", "-e", &ep, "-t", "300", "-r", "2", "status"])
                .env("SERVICE_MGR_KEY", "none"),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("refused our key"),
            "{err}"
        );
        // The manager's own key, as root on its host holds it.
        let r = mgmt(&ep, "manager.shutdown");
        assert_eq!(r["success"], 0, "{r}");
        assert_eq!(mgr.wait_exit(10).and_then(|s| s.code()), Some(0));
    });
}

/// `mgmt keys list` of `mgr`'s key store.
fn keys_list(mgr: &Proc) -> String {
    let keys_dir = mgr.pki.as_ref().unwrap().path("state/keys");
    let out = run(&["mgmt", "keys", "list", "--keys-dir", &keys_dir]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `mgmt keys ARGS...` on `mgr`'s key store.
fn keys_cmd(mgr: &Proc, args: &[&str]) -> std::process::Output {
    let keys_dir = mgr.pki.as_ref().unwrap().path("state/keys");
    let mut all = vec!["mgmt", "keys"];
    all.extend_from_slice(args);
    all.extend(["--keys-dir", &keys_dir]);
    run(&all)
}

/// A signed hello of `key` for the node of its name, as an agent sends it.
fn signed_hello(key: &KeyPair) -> Vec<u8> {
    let node = key.name().to_owned();
    let announce = p::Announce {
        kind: p::AnnounceKind::Hello,
        v: p::PROTOCOL_VERSION,
        node: node.clone(),
        instance: uuid::Uuid::new_v4().simple().to_string(),
        system: "Linux".into(),
        release: "6.1".into(),
        os_version: "#1".into(),
        topics: vec!["Linux".into(), "any".into(), node],
        agent_version: "0.2.0".into(),
        started_ms: service_mgr::clock::now_ms(),
        interval_ms: 2000,
        running: 0,
        auth: None,
        uuid: p::ANNOUNCE_UUID.into(),
    };
    let body = p::SignedAnnounce {
        announce: announce.clone(),
        key: key.public().to_string(),
        ts: service_mgr::clock::now_ms(),
    };
    let auth = security::sign_body(
        key,
        Purpose::Announce,
        &serde_json::to_value(&body).unwrap(),
    );
    p::encode(&p::Announce {
        auth: Some(auth),
        ..announce
    })
}

/// A PUSH socket to `mgr`'s sink from `source` (libzmq's "source;destination"
/// form, so that a test can speak from 127.0.0.2 on loopback), on a CURVE
/// connection of `key` when the manager is secure.
fn sink_from(ctx: &zmq::Context, mgr: &Proc, source: &str, key: &KeyPair) -> zmq::Socket {
    let port = mgr
        .ep("sink_endpoint")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let s = ctx.socket(zmq::PUSH).unwrap();
    s.set_linger(5000).unwrap();
    if let Some(line) = mgr.ready["manager_key"].as_str() {
        let server: security::PublicKey = line.parse().unwrap();
        s.set_curve_serverkey(&server.curve_key()).unwrap();
        s.set_curve_publickey(&key.public().curve_key()).unwrap();
        s.set_curve_secretkey(&key.curve_secret()).unwrap();
    }
    s.connect(&format!("tcp://{source}:0;127.0.0.1:{port}"))
        .unwrap();
    s
}

/// 1,200 agent keys announced in 1.6 s from one address filled the pending
/// keys and locked out a new real agent (issue 11).
#[test]
fn pending_key_flood_from_one_source_does_not_lock_out_a_new_agent() {
    with_timeout(120, || {
        let mgr = manager(&[]);
        // The flood comes from 127.0.0.2, the real agent from 127.0.0.1: two
        // sources on loopback. Each flood key announces itself on its own
        // connection (a connection speaks only for its own CURVE key); 25 stay
        // within the handshakes of unknown keys the manager admits per address
        // and minute (manager::peers), so that all reach the key store.
        const FLOOD: usize = 25;
        let ctx = zmq::Context::new();
        let mut flood = Vec::new();
        for i in 0..FLOOD {
            let key = KeyPair::generate(Role::Agent, &format!("flood{i}")).unwrap();
            let push = sink_from(&ctx, &mgr, "127.0.0.2", &key);
            push.send(signed_hello(&key), 0).unwrap();
            flood.push(push);
        }
        // The flood was cut off and counted: every announcement of it was
        // filed pending or counted as turned away, in keys list.
        let list = wait_for(30, "the flood to be counted in keys list", || {
            let list = keys_list(&mgr);
            let filed = list.lines().filter(|l| l.contains("flood")).count();
            let turned = list
                .lines()
                .find_map(|l| l.strip_prefix("turned away: "))
                .and_then(|l| l.split(' ').next()?.parse::<usize>().ok())
                .unwrap_or(0);
            (filed + turned == FLOOD).then_some(list)
        });
        let filed = list.lines().filter(|l| l.contains("flood")).count();
        // The per-source burst, plus a refill if the flood took over 6 s.
        assert!(
            filed <= security::SOURCE_BURST as usize + 1,
            "{filed} flood keys pending:\n{list}"
        );
        assert!(
            list.contains("over the per-source rate limit") && list.contains("from 127.0.0.2"),
            "{list}"
        );
        // Logged once for the interval, not once per key.
        let log = mgr.log_text();
        assert_eq!(count_lines(&log, "unknown keys turned away"), 1, "{log}");
        // An accepted node is not crowded out, even from the flooding source ...
        let n1 = mgr.pki.as_ref().unwrap().agent_key("n1");
        let n1 = KeyPair::load(std::path::Path::new(&n1)).unwrap();
        sink_from(&ctx, &mgr, "127.0.0.2", &n1)
            .send(signed_hello(&n1), 0)
            .unwrap();
        wait_for(20, "the accepted node's hello to be admitted", || {
            agent_listed(&mgr, "n1", "connecting").0.then_some(())
        });
        // ... and a new real agent from another source is filed pending, and
        // once accepted it serves.
        let dir = tempfile::tempdir().unwrap();
        let (_web7, fp) = agent_with_own_key(&mgr, "web7", dir.path());
        wait_for(20, "the new agent's key to be pending", || {
            keys_list(&mgr)
                .lines()
                .any(|l| l.starts_with("pending") && l.contains(&fp))
                .then_some(())
        });
        let out = keys_cmd(&mgr, &["accept", &fp]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_registered(&mgr, "web7");
        let (out, doc) = Client::new(&mgr)
            .nodes("web7")
            .cmd("status")
            .service("x")
            .run();
        assert_eq!(out.status.code(), Some(0), "{doc}");
        assert_eq!(calls(dir.path()), ["x status"]);
    });
}

/// An agent key named like an accepted node was filed pending with no word
/// that the name was held; once accepted, requests for `-N web1` ran on the
/// impostor and showed as verified `ok` (issue 11).
#[test]
fn an_agent_key_named_like_an_accepted_node_is_a_name_clash() {
    with_timeout(90, || {
        let real_dir = tempfile::tempdir().unwrap();
        let fake = fake_service(real_dir.path());
        let mgr = manager(&[]);
        let _web1 = agent(&mgr, "web1", &fake, &[]);
        let real_fp = KeyPair::load(std::path::Path::new(
            &mgr.pki.as_ref().unwrap().agent_key("web1"),
        ))
        .unwrap()
        .public()
        .fingerprint();
        let other_dir = tempfile::tempdir().unwrap();
        let (_impostor, fp) = agent_with_own_key(&mgr, "web1", other_dir.path());
        // Flagged in keys list ...
        let line = wait_for(20, "the impostor's key to be pending", || {
            keys_list(&mgr)
                .lines()
                .find(|l| l.starts_with("pending") && l.contains(&fp))
                .map(str::to_owned)
        });
        assert!(
            line.contains("NAME CLASH") && line.contains(&real_fp) && line.contains("--force"),
            "{line}"
        );
        // ... in the manager's log when filed ...
        let log = mgr.log_text();
        assert!(
            log.lines()
                .any(|l| l.contains("name clash") && l.contains(&fp) && l.contains(&real_fp)),
            "{log}"
        );
        // ... and on accept, which refuses without --force.
        let out = keys_cmd(&mgr, &["accept", &fp]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted without --force");
        assert!(
            err.contains("name clash")
                && err.contains(&real_fp)
                && err.contains(&format!("accept --force {fp}")),
            "{err}"
        );
        assert!(keys_list(&mgr)
            .lines()
            .any(|l| l.starts_with("pending") && l.contains(&fp)));
        // Requests for web1 run on web1, never on the other key.
        std::thread::sleep(Duration::from_millis(600));
        let (out, doc) = Client::new(&mgr)
            .nodes("web1")
            .cmd("status")
            .service("x")
            .run();
        assert_eq!(out.status.code(), Some(0), "{doc}");
        assert_eq!(doc["results"].as_array().unwrap().len(), 1, "{doc}");
        assert_eq!(calls(real_dir.path()), ["x status"]);
        assert!(calls(other_dir.path()).is_empty());
        // --force: the node was reinstalled; the new key replaces the old one,
        // whose connection gets no request once the manager has read the change.
        let reloads = count_lines(&mgr.log_text(), "key store changed");
        let out = keys_cmd(&mgr, &["accept", "--force", &fp]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains("rejected") && said.contains("accepted"),
            "{said}"
        );
        let list = keys_list(&mgr);
        assert!(
            list.lines()
                .any(|l| l.starts_with("rejected") && l.contains(&real_fp)),
            "{list}"
        );
        wait_for(10, "the manager to read the change", || {
            (count_lines(&mgr.log_text(), "key store changed") > reloads).then_some(())
        });
        wait_for(20, "requests for web1 to reach the new key", || {
            let (out, _) = Client::new(&mgr)
                .nodes("web1")
                .cmd("status")
                .service("y")
                .run();
            (out.status.code() == Some(0) && !calls(other_dir.path()).is_empty()).then_some(())
        });
        assert!(
            !calls(real_dir.path()).contains(&"y status".to_owned()),
            "{:?}\n{}",
            calls(real_dir.path()),
            mgr.log_text()
        );
    });
}

/// Start `service-mgr ARGS... -d -p PID -o LOG start` as an init script
/// does: the start's output, and a guard that kills the daemon if it did start.
fn start_detached(
    dir: &std::path::Path,
    args: &[String],
) -> (std::process::Output, Option<Detached>) {
    let pidfile = dir.join("daemon.pid");
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args)
        .arg("-d")
        .arg("-p")
        .arg(&pidfile)
        .arg("-o")
        .arg(dir.join("daemon.log"))
        .arg("start");
    let out = output(&mut cmd);
    let started = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .map(Detached::new);
    (out, started)
}

/// `agent -f /dev/null -n n1` on loopback with this key and authorized clients.
fn agent_args(key_file: &std::path::Path, clients: &std::path::Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "agent",
        "-f",
        "/dev/null",
        "-n",
        "n1",
        "-O",
        "manager_key=\"plaintext\"",
    ]
    .map(String::from)
    .to_vec();
    for set in [
        "manager_endpoint=tcp://127.0.0.1:9".to_owned(),
        "sink_endpoint=tcp://127.0.0.1:9".to_owned(),
        format!("mgmt_endpoint={LOOPBACK}"),
        format!("key_file={}", toml_str(&key_file.display().to_string())),
        format!(
            "authorized_clients={}",
            toml_str(&clients.display().to_string())
        ),
    ] {
        args.extend(["-O".to_owned(), set]);
    }
    args
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An agent trusted an authorized_clients file that every user could write:
/// anyone on the node could add a key and run commands through the agent.
#[test]
fn world_writable_authorized_clients_is_refused_at_start() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let clients = dir.path().join("authorized_clients");
        std::fs::write(&clients, "# nobody yet\n").unwrap();
        set_mode(&clients, 0o666);
        let args = agent_args(&dir.path().join("agent.key"), &clients);
        let (out, started) = start_detached(dir.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(started.is_none(), "the agent started: {err}");
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("writable by every user")
                && err.contains(&format!("run `chmod o-w {}`", clients.display())),
            "{err}"
        );
        set_mode(&clients, 0o644);
        let (out, started) = start_detached(dir.path(), &args);
        assert!(
            started.is_some(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The manager trusted a key store folder that every user could write:
/// anyone on its host could admit a key by dropping a file into accepted/.
#[test]
fn world_writable_key_store_is_refused_at_start() {
    with_timeout(60, || {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let accepted = std::path::Path::new(&pki.path("state/keys/accepted")).to_owned();
        set_mode(&accepted, 0o777);
        let mut args: Vec<String> = ["daemon", "-f", "/dev/null"].map(String::from).to_vec();
        for set in MANAGER_ENDPOINTS
            .map(|k| format!("{k}={LOOPBACK}"))
            .into_iter()
            .chain([format!("state_dir={}", toml_str(&pki.path("state")))])
        {
            args.extend(["-O".to_owned(), set]);
        }
        let (out, started) = start_detached(dir.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(started.is_none(), "the manager started: {err}");
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("writable by every user")
                && err.contains(&format!("run `chmod o-w {}`", accepted.display())),
            "{err}"
        );
    });
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// jobs.redb (every request, who sent it and every output) was created 0644,
/// readable by every user of the manager's host.
#[test]
fn job_store_is_created_private() {
    with_timeout(60, || {
        let mgr = manager(&[]);
        let store =
            std::path::Path::new(&mgr.pki.as_ref().unwrap().path("state/jobs.redb")).to_owned();
        assert_eq!(mode_of(&store), 0o600, "{}", store.display());
    });
}

/// authorized_clients was looked for in /etc/service-mgr (or ~/.config) even
/// with key_file elsewhere, not beside key_file as the README says: the agent
/// refused every signed request.
#[test]
fn authorized_clients_is_found_beside_a_non_default_key_file() {
    with_timeout(60, || {
        let tmp = tempfile::tempdir().unwrap();
        let fake = fake_service(tmp.path());
        let mut mgr = manager(&[]);
        accept_agent_key(&mgr, "n1");
        let pki = mgr.pki.as_ref().unwrap();
        let node_dir = std::path::Path::new(&pki.path("n1-etc")).to_owned();
        std::fs::create_dir(&node_dir).unwrap();
        let key = node_dir.join("agent.key");
        std::fs::rename(pki.agent_key("n1"), &key).unwrap();
        std::fs::copy(
            pki.path("client.key.pub"),
            node_dir.join("authorized_clients"),
        )
        .unwrap();
        let _agent = agent_default_clients(&mgr, "n1", &fake, &key);
        assert_serves(
            &mut mgr,
            "n1",
            "starting with authorized_clients beside key_file",
        );
    });
}
