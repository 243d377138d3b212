//! Old peers keep working: the 0.1 side of each conversation is spoken here
//! with raw `zmq` sockets, frame for frame as the Python 0.1 release did
//! (see PROTOCOL-0.1.md), never through our client or agent code.

use crate::util::*;

use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// A.1: a 0.1 client against our manager and agents
// ---------------------------------------------------------------------------

/// 0.1's client order: REQ for the uuid, and only then SUB to the result
/// publisher. Our agents answer within milliseconds, so a manager that does
/// not hold results until the subscription arrives loses some (0.1 did).
#[test]
fn a1_raw_01_client_gets_every_result_of_fast_agents() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager_compat(&[]);
        let nodes = ["a1", "a2", "a3"];
        let _agents = nodes.map(|n| compat_agent(&mgr, n, &fake));
        let frontend = mgr.ep("frontend_endpoint");
        let ctx = zmq::Context::new();
        let mut received = 0;
        let mut uuids = BTreeSet::new();
        for i in 0..50 {
            let service = format!("svc{i}");
            // Exactly what 0.1 sends: no "v", no extra field.
            let request = json!({"cmd": "status", "service": service, "topic": "any"});
            let reply = json(&req_raw(&frontend, request.to_string().as_bytes()));
            let uuid = reply["uuid"]
                .as_str()
                .unwrap_or_else(|| panic!("request {i}: no uuid in {reply}"))
                .to_owned();
            assert!(
                uuid.len() == 32
                    && uuid
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "uuid is not 32 lowercase hex digits: {uuid:?}"
            );
            assert!(uuids.insert(uuid.clone()), "uuid {uuid} handed out twice");
            let port = reply["port"]
                .as_u64()
                .unwrap_or_else(|| panic!("port is not an integer: {reply}"));
            // Only now, as 0.1 did: SUB to the host of -e and the port it got.
            let sub = ctx.socket(zmq::SUB).unwrap();
            sub.set_linger(0).unwrap();
            sub.set_subscribe(uuid.as_bytes()).unwrap();
            sub.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
            let mut from = BTreeSet::new();
            while from.len() < nodes.len() {
                let frames = recv_within(&sub, 5000).unwrap_or_else(|| {
                    panic!(
                        "request {i}: only {} of {} results arrived within 5 s (from {from:?}); \
                         received so far in total: {received}",
                        from.len(),
                        nodes.len()
                    )
                });
                assert_eq!(frames.len(), 2, "result is not [uuid, json]: {frames:?}");
                assert_eq!(frames[0], uuid.as_bytes());
                let r = json(&frames[1]);
                assert_eq!(r["uuid"], uuid.as_str(), "{r}");
                assert_eq!(r["msg"], "Executed service status request", "{r}");
                let res = &r["result"];
                assert_eq!(res["returncode"], 0, "{r}");
                assert_eq!(res["service"], service.as_str(), "{r}");
                // As 0.1's agent sent them: `out.split('\n')` (issue 15).
                assert_eq!(
                    res["stdout"],
                    json!([format!("{service} status ok"), ""]),
                    "{r}"
                );
                assert_eq!(res["stderr"], json!([""]), "{r}");
                let node = res["node"].as_str().unwrap().to_owned();
                assert!(nodes.contains(&node.as_str()), "{r}");
                assert!(from.insert(node.clone()), "{node} answered twice: {r}");
                received += 1;
            }
            // A 0.1 client keeps reading for -w: nothing more (no duplicate) comes.
            if let Some(extra) = recv_within(&sub, 10) {
                panic!("request {i}: a 4th frame arrived: {extra:?}");
            }
        }
        assert_eq!(received, 150);
        // Each agent ran each request exactly once.
        assert_eq!(calls(dir.path()).len(), 150);
    });
}

// ---------------------------------------------------------------------------
// A.2: a 0.1 agent behind our manager
// ---------------------------------------------------------------------------

/// A 0.1 agent: SUB to the backend with plain prefix subscriptions, PUSH to
/// Every (topic, request) frame a raw 0.1 agent saw.
type Seen = Arc<Mutex<Vec<(Vec<u8>, Value)>>>;

/// the sink, and the 0.1 result object (plus "uuid") for each request.
struct Raw01Agent {
    stop: Arc<AtomicBool>,
    /// (topic frame, request) of every message received, in order.
    seen: Seen,
    /// Every result sent, in order.
    sent: Arc<Mutex<Vec<Value>>>,
    thread: Option<JoinHandle<()>>,
}

impl Raw01Agent {
    /// `lines`: send stdout/stderr as lists of lines (0.1's last commit)
    /// instead of strings (0.1's README).
    fn start(backend: &str, sink: &str, node: &str, lines: bool) -> Raw01Agent {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let ctx = zmq::Context::new();
        let sub = ctx.socket(zmq::SUB).unwrap();
        sub.set_linger(0).unwrap();
        for t in ["any", "Linux", node] {
            sub.set_subscribe(t.as_bytes()).unwrap();
        }
        sub.connect(backend).unwrap();
        let push = ctx.socket(zmq::PUSH).unwrap();
        push.set_linger(1000).unwrap();
        push.connect(sink).unwrap();
        let node = node.to_owned();
        let (stop2, seen2, sent2) = (stop.clone(), seen.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let _ctx = ctx;
            while !stop2.load(Ordering::SeqCst) {
                let Some(frames) = recv_within(&sub, 20) else {
                    continue;
                };
                let [topic, body] = frames.as_slice() else {
                    continue;
                };
                // recv_unicode + recv_json, as agent.py does.
                let Ok(req) = serde_json::from_slice::<Value>(body) else {
                    continue;
                };
                seen2.lock().unwrap().push((topic.clone(), req.clone()));
                let mut result = match (req["cmd"].as_str(), req["service"].as_str()) {
                    (Some(cmd), Some(service)) => {
                        let (stdout, stderr) = if lines {
                            (
                                json!([format!("{service} is running\n"), "as pid 1768.\n"]),
                                json!([]),
                            )
                        } else {
                            (
                                json!(format!("{service} is running as pid 1768.\n")),
                                json!(""),
                            )
                        };
                        json!({
                            "msg": format!("Executed service {cmd} request"),
                            "result": {
                                "node": node, "returncode": 0, "service": service,
                                "stdout": stdout, "system": "Linux",
                                "version": "#1 SMP Debian 3.2.51-1", "stderr": stderr
                            }
                        })
                    }
                    _ => json!({"success": -1, "msg": "Missing message properties"}),
                };
                result["uuid"] = req["uuid"].clone();
                push.send(result.to_string().as_bytes(), 0).unwrap();
                sent2.lock().unwrap().push(result);
            }
        });
        Raw01Agent {
            stop,
            seen,
            sent,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<(Vec<u8>, Value)> {
        self.seen.lock().unwrap().clone()
    }

    fn sent(&self) -> Vec<Value> {
        self.sent.lock().unwrap().clone()
    }
}

impl Drop for Raw01Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every field the 0.1 agent sent is in `printed` unchanged (the client may add some).
fn assert_contains_01_result(printed: &Value, sent: &Value) {
    let sent: &Map<String, Value> = sent.as_object().unwrap();
    for (k, v) in sent {
        assert_eq!(
            &printed[k], v,
            "field {k:?} changed on the way: sent {sent:?}, printed {printed}"
        );
    }
}

#[test]
fn a2_raw_01_agent_answers_our_client_through_our_manager() {
    with_timeout(60, || {
        let mgr = manager_compat(&[]);
        let backend = mgr.ep("backend_endpoint");
        let sink = mgr.ep("sink_endpoint");
        let old1 = Raw01Agent::start(&backend, &sink, "old1", false);
        let old2 = Raw01Agent::start(&backend, &sink, "old2", true);
        wait_subscribed(&mgr, "old1");
        wait_subscribed(&mgr, "old2");
        let frontend = mgr.ep("frontend_endpoint");

        // stdout as a string (0.1's README).
        let started = Instant::now();
        let out = Client::at(&frontend)
            .unsigned()
            .topic("old1")
            .cmd("status")
            .service("x")
            .wait("3")
            .format("legacy")
            .output();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let printed = json(&out.stdout);
        let list = printed.as_array().unwrap_or_else(|| panic!("{printed}"));
        assert_eq!(list.len(), 1, "{printed}\n{stderr}");
        let sent = old1.sent();
        assert_eq!(sent.len(), 1, "old1 answered {sent:?}");
        assert_contains_01_result(&list[0], &sent[0]);
        assert_eq!(list[0]["result"]["stdout"], "x is running as pid 1768.\n");
        assert_eq!(out.status.code(), Some(0), "{printed}\n{stderr}");
        // The request old1 got is the 0.1 object plus uuid.
        let (_, req) = &old1.seen()[0];
        for (k, v) in [("cmd", "status"), ("service", "x"), ("topic", "old1")] {
            assert_eq!(req[k], v, "{req}");
        }
        assert_eq!(req["uuid"], sent[0]["uuid"]);
        // The manager counted old1 as an unregistered subscriber, so the
        // client returned when it answered instead of waiting the full -w 3.
        assert!(
            took < Duration::from_millis(2500),
            "the client waited {took:?} for one 0.1 agent the manager knew about"
        );
        assert!(
            old2.seen().is_empty(),
            "old2 got old1's request: {:?}",
            old2.seen()
        );

        // stdout as a list of lines (0.1's last commit), and both at once via "any".
        let out = Client::at(&frontend)
            .unsigned()
            .topic("any")
            .cmd("status")
            .service("y")
            .wait("3")
            .format("legacy")
            .output();
        let printed = json(&out.stdout);
        let list = printed.as_array().unwrap_or_else(|| panic!("{printed}"));
        assert_eq!(list.len(), 2, "{printed}");
        let of = |node: &str| {
            list.iter()
                .find(|r| r["result"]["node"] == node)
                .unwrap_or_else(|| panic!("no result of {node} in {printed}"))
                .clone()
        };
        assert_contains_01_result(&of("old1"), &old1.sent()[1]);
        assert_contains_01_result(&of("old2"), &old2.sent()[0]);
        assert_eq!(
            of("old2")["result"]["stdout"],
            json!(["y is running\n", "as pid 1768.\n"])
        );
        assert_eq!(out.status.code(), Some(0), "{printed}");

        // Our own JSON report reads the list form too: one ok per node.
        let out = Client::at(&frontend)
            .unsigned()
            .topic("old2")
            .cmd("status")
            .service("z")
            .wait("3")
            .output();
        let doc = json(&out.stdout);
        assert_eq!(doc["results"].as_array().map(Vec::len), Some(1), "{doc}");
        assert_eq!(doc["results"][0]["node"], "old2", "{doc}");
        assert_eq!(doc["results"][0]["status"], "ok", "{doc}");
        assert_eq!(doc["summary"]["ok"], 1, "{doc}");
    });
}

/// 0.1 matched by prefix: topic `node10` ran on host `node1`, anything that
/// starts with `any` or `Linux` reached every agent. Our manager stores each
/// subscription and each topic with a terminator, so a 0.1 agent gets exactly
/// its topics even though its SUB socket still matches by prefix.
#[test]
fn a2_raw_01_agent_gets_exact_topics_only() {
    with_timeout(60, || {
        let mgr = manager_compat(&[]);
        let old = Raw01Agent::start(
            &mgr.ep("backend_endpoint"),
            &mgr.ep("sink_endpoint"),
            "node1",
            false,
        );
        wait_subscribed(&mgr, "node1");
        wait_subscribed(&mgr, "any");
        wait_subscribed(&mgr, "Linux");
        let frontend = mgr.ep("frontend_endpoint");
        let send = |topic: &str| {
            let r = json(&req_raw(
                &frontend,
                json!({"cmd": "status", "service": "x", "topic": topic})
                    .to_string()
                    .as_bytes(),
            ));
            assert!(r["uuid"].is_string(), "request to {topic} refused: {r}");
        };
        // None of these may reach node1 ...
        for topic in [
            "node10", "node", "nod", "anything", "any1", "Linuxx", "Linux-2",
        ] {
            send(topic);
        }
        // ... and this one must. Messages from one publisher arrive in order,
        // so once it is there, any leak of the earlier ones would be there too.
        send("node1");
        wait_for(10, "node1's request", || {
            (!old.seen().is_empty()).then_some(())
        });
        let topics = |seen: Vec<(Vec<u8>, Value)>| -> Vec<String> {
            seen.iter()
                .map(|(_, r)| r["topic"].as_str().unwrap_or("?").to_owned())
                .collect()
        };
        assert_eq!(
            topics(old.seen()),
            ["node1"],
            "prefix matching let requests through"
        );
        // Its own topics, `any` and the OS name, still reach it.
        send("any");
        send("Linux");
        wait_for(10, "the any and Linux requests", || {
            (old.seen().len() >= 3).then_some(())
        });
        assert_eq!(topics(old.seen()), ["node1", "any", "Linux"]);
        // The topic frame is the topic and the terminator (recv_unicode reads it fine).
        assert_eq!(old.seen()[0].0, b"node1\0");
        assert!(std::str::from_utf8(&old.seen()[0].0).is_ok());
        // Each was answered once and nothing more arrived.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(old.seen().len(), 3, "{:?}", topics(old.seen()));
        assert_eq!(old.sent().len(), 3);
    });
}

// ---------------------------------------------------------------------------
// A.3: our client and agent against a 0.1 manager
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Raw01State {
    /// Subscription messages from the backend (first byte 1 or 0, then the topic).
    subscriptions: Vec<Vec<u8>>,
    /// Every frame read from the sink, in order.
    sink: Vec<Vec<u8>>,
    /// Sink frames a 0.1 manager dies on (`recv_json` fails, or `msg['uuid']` raises).
    fatal: Vec<String>,
    /// Requests the frontend accepted, with the uuid given.
    requests: Vec<Value>,
}

/// The 0.1 manager, run in a thread of the test: ROUTER frontend answering
/// {"uuid", "port"}, XPUB backend publishing [topic, request + uuid] with the
/// topic as it came (no terminator), PULL sink, PUB result publisher.
/// Tolerant where 0.1 died: a sink frame it could not route is recorded in
/// `fatal` and skipped, so that one test can check the round trip and
/// another what would have killed a real one.
struct Raw01Manager {
    frontend: String,
    backend: String,
    sink: String,
    state: Arc<Mutex<Raw01State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Raw01Manager {
    fn start() -> Raw01Manager {
        let ctx = zmq::Context::new();
        let (frontend, frontend_ep) = bind_loopback(&ctx, zmq::ROUTER);
        let (backend, backend_ep) = bind_loopback(&ctx, zmq::XPUB);
        let (sink, sink_ep) = bind_loopback(&ctx, zmq::PULL);
        let (results, results_ep) = bind_loopback(&ctx, zmq::PUB);
        let port: u16 = results_ep.rsplit(':').next().unwrap().parse().unwrap();
        let state = Arc::new(Mutex::new(Raw01State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _ctx = ctx;
            while !stop2.load(Ordering::SeqCst) {
                let mut items = [
                    frontend.as_poll_item(zmq::POLLIN),
                    backend.as_poll_item(zmq::POLLIN),
                    sink.as_poll_item(zmq::POLLIN),
                ];
                zmq::poll(&mut items, 20).unwrap();
                let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
                if ready[0] {
                    let frames = frontend.recv_multipart(0).unwrap();
                    // [identity, "", request], as process_frontend_msg reads it.
                    let mut msg = json(&frames[2]);
                    let uuid = uuid::Uuid::new_v4().simple().to_string();
                    let reply = json!({"uuid": uuid, "port": port}).to_string();
                    frontend
                        .send_multipart([frames[0].as_slice(), b"", reply.as_bytes()], 0)
                        .unwrap();
                    msg["uuid"] = json!(uuid);
                    let topic = msg["topic"].as_str().unwrap().to_owned();
                    backend
                        .send_multipart([topic.as_bytes(), msg.to_string().as_bytes()], 0)
                        .unwrap();
                    state2
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .requests
                        .push(msg);
                }
                if ready[1] {
                    let frame = backend.recv_bytes(0).unwrap();
                    state2
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .subscriptions
                        .push(frame);
                }
                if ready[2] {
                    let frame = sink.recv_bytes(0).unwrap();
                    let mut st = state2.lock().unwrap_or_else(|p| p.into_inner());
                    st.sink.push(frame.clone());
                    match serde_json::from_slice::<Value>(&frame) {
                        Ok(Value::Object(m)) => match m.get("uuid").and_then(Value::as_str) {
                            Some(uuid) => {
                                results
                                    .send_multipart([uuid.as_bytes(), frame.as_slice()], 0)
                                    .unwrap();
                            }
                            None => st.fatal.push(format!(
                                "KeyError 'uuid' on {}",
                                String::from_utf8_lossy(&frame)
                            )),
                        },
                        _ => st.fatal.push(format!(
                            "recv_json/['uuid'] fails on {}",
                            String::from_utf8_lossy(&frame)
                        )),
                    }
                }
            }
        });
        Raw01Manager {
            frontend: frontend_ep,
            backend: backend_ep,
            sink: sink_ep,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Wait until a subscriber subscribed to exactly `topic`.
    fn wait_subscription(&self, topic: &str) {
        let mut want = vec![1u8];
        want.extend_from_slice(topic.as_bytes());
        wait_for(20, &format!("a subscription to {topic:?}"), || {
            self.state
                .lock()
                .unwrap()
                .subscriptions
                .contains(&want)
                .then_some(())
        });
    }
}

impl Drop for Raw01Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a3_our_client_and_agent_work_through_a_01_manager() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let old = Raw01Manager::start();
        let _agent = agent_at(&old.backend, &old.sink, "new1", &fake, dir.path(), &[]);
        // Subscriptions are plain prefixes to a 0.1 manager; ours arrive as such.
        old.wait_subscription("new1");
        old.wait_subscription("any");
        // A 0.1 manager dispatches at once and publishes results on a plain PUB:
        // a result that comes before the client's subscription is lost (0.1's
        // own defect). `brief-svc` takes 0.3 s, as a real service command does.
        let started = Instant::now();
        let out = Client::at(&old.frontend)
            .unsigned()
            .topic("new1")
            .cmd("status")
            .service("brief-svc")
            .wait("2")
            .output();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let doc = json(&out.stdout);
        let results = doc["results"]
            .as_array()
            .unwrap_or_else(|| panic!("{doc}\n{stderr}"));
        assert_eq!(results.len(), 1, "{doc}\n{stderr}");
        let r = &results[0];
        assert_eq!(r["msg"], "Executed service status request", "{doc}");
        assert_eq!(r["result"]["node"], "new1", "{doc}");
        assert_eq!(r["result"]["service"], "brief-svc", "{doc}");
        assert_eq!(r["result"]["returncode"], 0, "{doc}");
        assert_eq!(r["result"]["stdout"], "brief-svc status ok\n", "{doc}");
        assert_eq!(r["status"], "ok", "{doc}");
        assert_eq!(out.status.code(), Some(0), "{doc}\n{stderr}");
        // The uuid is the one the 0.1 manager handed out.
        let requests = old.state.lock().unwrap().requests.clone();
        assert_eq!(requests.len(), 1);
        assert_eq!(r["uuid"], requests[0]["uuid"], "{doc}");
        assert_eq!(doc["job"], requests[0]["uuid"], "{doc}");
        // Our client sent 0.1's three fields (anything more is ignored by 0.1).
        for (k, v) in [
            ("cmd", "status"),
            ("service", "brief-svc"),
            ("topic", "new1"),
        ] {
            assert_eq!(requests[0][k], v, "{}", requests[0]);
        }
        // No "expected" from a 0.1 manager: the client waits its full -w, no more.
        assert!(took >= Duration::from_secs(2), "returned after {took:?}");
        assert!(took < Duration::from_secs(5), "returned after {took:?}");
        assert_eq!(calls(dir.path()), ["brief-svc status"]);
    });
}

/// A 0.1 manager reads every sink frame with `recv_json` and then `msg['uuid']`;
/// a frame without a uuid raises and kills it (PROTOCOL-0.1.md, known defects).
/// So our agent must send a 0.1 manager's sink nothing but results with a uuid.
#[test]
fn a3_our_agent_sends_a_01_manager_nothing_that_kills_it() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let old = Raw01Manager::start();
        let _agent = agent_at(&old.backend, &old.sink, "new2", &fake, dir.path(), &[]);
        old.wait_subscription("new2");
        // One real request, and long enough for the agent's first heartbeat (2 s).
        let out = Client::at(&old.frontend)
            .unsigned()
            .topic("new2")
            .cmd("status")
            .service("brief-svc")
            .wait("2.5")
            .output();
        let doc = json(&out.stdout);
        assert_eq!(doc["results"][0]["result"]["node"], "new2", "{doc}");
        let (sink, fatal) = {
            let st = old.state.lock().unwrap();
            (st.sink.clone(), st.fatal.clone())
        };
        assert!(!sink.is_empty());
        assert!(
            fatal.is_empty(),
            "a real 0.1 manager would have died on our agent's sink frames \
             ({} of {} frames):\n{}",
            fatal.len(),
            sink.len(),
            fatal.join("\n")
        );
    });
}

/// One request as the 0.1 client makes it through `frontend`: REQ for the
/// uuid and port, only then SUB (`gap_ms` later: Python and a LAN take a few
/// milliseconds between the reply and the subscription), then read for
/// `window_ms` after subscribing (0.1's -w, default 100), or until `want`
/// results came. Returns each result with its arrival after the subscription.
fn raw_01_client(
    ctx: &zmq::Context,
    frontend: &str,
    request: &Value,
    gap_ms: u64,
    window_ms: u64,
    want: usize,
) -> Vec<(Duration, Value)> {
    let reply = json(&req_raw(frontend, request.to_string().as_bytes()));
    let uuid = reply["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_owned();
    let port = reply["port"].as_u64().unwrap_or_else(|| panic!("{reply}"));
    std::thread::sleep(Duration::from_millis(gap_ms));
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    sub.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
    sub.set_subscribe(uuid.as_bytes()).unwrap();
    let subscribed = Instant::now();
    let until = subscribed + Duration::from_millis(window_ms);
    let mut got = Vec::new();
    while got.len() < want {
        let left = until.saturating_duration_since(Instant::now()).as_millis() as i64;
        if left == 0 {
            break;
        }
        if let Some(frames) = recv_within(&sub, left) {
            assert_eq!(frames.len(), 2, "result is not [uuid, json]: {frames:?}");
            got.push((subscribed.elapsed(), json(&frames[1])));
        }
    }
    got
}

/// Issue 15: 0.2 agents behind a 0.1 manager lost 12-33 % of results to a
/// 0.1 client, answering before it had subscribed.
#[test]
fn a3_results_of_our_agents_reach_a_01_client_through_a_01_manager() {
    with_timeout(180, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let old = Raw01Manager::start();
        let _agent = agent_at(&old.backend, &old.sink, "new3", &fake, dir.path(), &[]);
        old.wait_subscription("new3");
        let ctx = zmq::Context::new();
        let runs = 50;
        // Lost for good (nothing within 2 s), and later than 0.1's default -w 0.1.
        let (mut lost, mut late) = (0, 0);
        for i in 0..runs {
            let request = json!({"cmd": "status", "service": format!("s{i}"), "topic": "new3"});
            match raw_01_client(&ctx, &old.frontend, &request, 10, 2000, 1).first() {
                None => lost += 1,
                Some((after, _)) if *after > Duration::from_millis(100) => late += 1,
                Some(_) => {}
            }
        }
        eprintln!(
            "of {runs} results to a 0.1 client through a 0.1 manager: {lost} lost \
             (sent before it subscribed), {late} later than 0.1's default wait of 0.1 s"
        );
        assert_eq!(
            lost, 0,
            "{lost} of {runs} results went out before the 0.1 client subscribed"
        );
        assert!(
            late <= runs / 10,
            "{late} of {runs} results came after 0.1's default -w 0.1"
        );
    });
}
/// Issue 15: upgrading only the agents (secure default) was silent: the 0.1
/// client got `[]` in 16 of 20 runs instead of the agent's refusal.
#[test]
fn a3_a_01_client_sees_the_refusal_of_a_secure_agent_behind_a_01_manager() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let old = Raw01Manager::start();
        let _agent = agent_at(
            &old.backend,
            &old.sink,
            "new4",
            &fake,
            dir.path(),
            &["-O", "allow_unsigned=false"],
        );
        old.wait_subscription("new4");
        let ctx = zmq::Context::new();
        for i in 0..20 {
            let request = json!({"cmd": "status", "service": "x", "topic": "new4"});
            let got = raw_01_client(&ctx, &old.frontend, &request, 10, 100, 2);
            assert_eq!(got.len(), 1, "run {i}: the 0.1 client got {got:?}");
            let r = &got[0].1;
            // 0.1's error shape: success -1 and a msg; ours adds node and status.
            assert_eq!(r["success"], -1, "{r}");
            assert_eq!(r["status"], "refused", "{r}");
            assert_eq!(r["node"], "new4", "{r}");
            assert!(r["msg"].as_str().unwrap().contains("unsigned"), "{r}");
        }
        assert!(calls(dir.path()).is_empty(), "a refused request ran");
    });
}

/// A hung 0.1 agent: subscribed like one (`any`, `Linux`, its node), never answering.
fn hung_01_agent(ctx: &zmq::Context, backend: &str, node: &str) -> zmq::Socket {
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    for t in ["any", "Linux", node] {
        sub.set_subscribe(t.as_bytes()).unwrap();
    }
    sub.connect(backend).unwrap();
    sub
}

/// Issue 15: against a 0.1 manager, a hung 0.1 agent left our client saying
/// `expected 0, answered 2`; a 0.1 manager cannot say who should answer.
#[test]
fn a3_our_client_says_a_01_manager_cannot_tell_who_should_answer() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let old = Raw01Manager::start();
        let _agent = agent_at(&old.backend, &old.sink, "new5", &fake, dir.path(), &[]);
        let ctx = zmq::Context::new();
        let _hung = hung_01_agent(&ctx, &old.backend, "hung5");
        old.wait_subscription("new5");
        old.wait_subscription("hung5");
        let started = Instant::now();
        let (out, text) = Client::at(&old.frontend)
            .unsigned()
            .topic("any")
            .cmd("status")
            .service("x")
            .wait("1")
            .format("table")
            .text();
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("a 0.1 manager cannot tell who should answer: 1 answered"),
            "{text}\n{err}"
        );
        assert!(!text.contains("expected"), "{text}");
        // Every answer it got was ok; it cannot know more.
        assert_eq!(out.status.code(), Some(0), "{text}\n{err}");
        assert!(took < Duration::from_secs(4), "waited {took:?} with -w 1");
        // Without -w: 0.1's default wait, never the 60 s meant for our managers.
        let started = Instant::now();
        let (out, text) = Client::at(&old.frontend)
            .unsigned()
            .topic("any")
            .cmd("status")
            .service("x")
            .format("table")
            .text();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "waited {:?} without -w",
            started.elapsed()
        );
        assert!(!text.contains("expected"), "{text}");
        assert!(
            matches!(out.status.code(), Some(0 | 4)),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Issue 15: a 0.1 agent behind our manager that does not answer went
/// uncounted (exit 0); the manager counted it as an unnamed subscriber.
#[test]
fn a2_silent_unnamed_01_agents_are_reported_and_exit_4() {
    with_timeout(60, || {
        let mgr = manager_compat(&[]);
        let backend = mgr.ep("backend_endpoint");
        let _old = Raw01Agent::start(&backend, &mgr.ep("sink_endpoint"), "old6", false);
        let ctx = zmq::Context::new();
        let _hung = hung_01_agent(&ctx, &backend, "hung6");
        wait_subscribed(&mgr, "old6");
        wait_subscribed(&mgr, "hung6");
        let out = Client::at(&mgr.ep("frontend_endpoint"))
            .unsigned()
            .topic("any")
            .cmd("status")
            .service("x")
            .wait("1")
            .output();
        let err = String::from_utf8_lossy(&out.stderr);
        let doc = json(&out.stdout);
        assert_eq!(out.status.code(), Some(4), "{doc}\n{err}");
        assert!(
            err.contains("1 of 2 unnamed 0.1 agents") && err.contains("stayed silent"),
            "{err}"
        );
        assert_eq!(doc["summary"]["expected"], 2, "{doc}");
        assert_eq!(doc["summary"]["answered"], 1, "{doc}");
        assert_eq!(doc["summary"]["no_response"], 1, "{doc}");
    });
}

/// Issue 15: `-N` against a 0.1 manager ran the dry run as a real `status` on
/// every agent, then blamed `--batch`, which was not given.
#[test]
fn a3_nodes_against_a_01_manager_run_nothing_and_name_what_was_asked() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let old = Raw01Manager::start();
        let _agent = agent_at(&old.backend, &old.sink, "new7", &fake, dir.path(), &[]);
        old.wait_subscription("new7");
        let (out, _) = Client::at(&old.frontend)
            .unsigned()
            .topic("any")
            .nodes("new7")
            .cmd("restart")
            .service("x")
            .wait("1")
            .text();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert!(
            err.contains("-N new7 needs a service-mgr 0.2 manager"),
            "{err}"
        );
        assert!(err.contains("is 0.1"), "{err}");
        assert!(!err.contains("--batch"), "{err}");
        // Give a dispatched request time to run: nothing may have.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(calls(dir.path()), Vec::<String>::new(), "{err}");
        // Only the probe reached the 0.1 manager, on a topic no agent hears.
        let requests = old.state.lock().unwrap().requests.clone();
        assert!(
            requests.iter().all(|r| r["topic"] == "!follow"),
            "{requests:?}"
        );
    });
}

// ---------------------------------------------------------------------------
// Management against 0.1 peers and agents
// ---------------------------------------------------------------------------

/// A 0.1 management socket (REP) in a thread: the manager's or the agent's
/// two commands, and 0.1's "Uknown management command" (sic) for the rest.
/// Records every command it got.
struct Raw01Mgmt {
    endpoint: String,
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Raw01Mgmt {
    fn start(who: &'static str) -> Raw01Mgmt {
        let ctx = zmq::Context::new();
        let (rep, endpoint) = bind_loopback(&ctx, zmq::REP);
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (stop2, got2) = (stop.clone(), got.clone());
        let thread = std::thread::spawn(move || {
            let _ctx = ctx;
            while !stop2.load(Ordering::SeqCst) {
                let Some(frames) = recv_within(&rep, 20) else {
                    continue;
                };
                let cmd = json(&frames[0])["cmd"].as_str().unwrap_or("").to_owned();
                got2.lock().unwrap().push(cmd.clone());
                let reply = match (who, cmd.as_str()) {
                    ("manager", "manager.status") => json!({"success": 0,
                        "msg": "Service Manager Status",
                        "result": {"status": "running", "uname": ["Linux"],
                                   "frontend_endpoint": "tcp://*:5500",
                                   "backend_endpoint": "tcp://*:5600",
                                   "sink_endpoint": "tcp://*:5700",
                                   "mgmt_endpoint": "tcp://*:5800",
                                   "result_publisher_port": 41234}}),
                    ("agent", "agent.status") => json!({"success": 0,
                        "msg": "Service Manager Agent Status",
                        "result": {"status": "running", "uname": ["Linux"],
                                   "manager_endpoint": "tcp://localhost:5600",
                                   "sink_endpoint": "tcp://localhost:5700",
                                   "mgmt_endpoint": "tcp://*:6000"}}),
                    _ => json!({"success": -1, "msg": "Uknown management command"}),
                };
                rep.send(reply.to_string().as_bytes(), 0).unwrap();
            }
        });
        Raw01Mgmt {
            endpoint,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn got(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Raw01Mgmt {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mgmt_cli(endpoint: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = output(
        as_newbie(
            std::process::Command::new(bin()).args(["mgmt", "-e", endpoint]),
            home.path(),
        )
        .args(args)
        // 0.1 daemons and our 0.1-compatible agent speak plaintext.
        .env("SERVICE_MGR_SERVER_KEY", "plaintext"),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 15: `mgmt agents` against a 0.1 manager printed `Uknown management
/// command` with no hint.
#[test]
fn m_mgmt_names_a_01_manager_and_its_commands() {
    with_timeout(30, || {
        let old = Raw01Mgmt::start("manager");
        let (code, out, err) = mgmt_cli(&old.endpoint, &["agents"]);
        assert_ne!(code, Some(0), "{out}\n{err}");
        // The reply as 0.1 gave it (stdout, JSON), and what it means (stderr).
        assert!(out.contains("Uknown management command"), "{out}");
        assert!(
            err.contains("is a service-mgr 0.1 manager")
                && err.contains("manager.status and manager.shutdown"),
            "{err}"
        );
        // The short status still works against it, asked once.
        let (code, out, err) = mgmt_cli(&old.endpoint, &["status", "--format", "json"]);
        assert_eq!(code, Some(0), "{out}\n{err}");
        assert!(out.contains("Service Manager Status"), "{out}");
        assert_eq!(
            old.got(),
            ["manager.agents", "manager.status", "manager.status"]
        );
    });
}

/// Issue 15: `mgmt -e <agent> status` asked `manager.status`, which an agent
/// does not know; the short name now works for an agent too.
#[test]
fn m_short_status_works_against_an_agent() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let old = Raw01Manager::start();
        let ours = agent_at(&old.backend, &old.sink, "new8", &fake, dir.path(), &[]);
        let (code, out, err) = mgmt_cli(&ours.ep("mgmt_endpoint"), &["status", "--format", "json"]);
        assert_eq!(code, Some(0), "{out}\n{err}");
        assert!(out.contains("Service Manager Agent Status"), "{out}");
        assert!(out.contains("new8"), "{out}");
        // As a table too.
        let (code, out, err) =
            mgmt_cli(&ours.ep("mgmt_endpoint"), &["status", "--format", "table"]);
        assert_eq!(code, Some(0), "{out}\n{err}");
        assert!(out.contains("new8"), "{out}");
        // And a 0.1 agent.
        let old_agent = Raw01Mgmt::start("agent");
        let (code, out, err) = mgmt_cli(&old_agent.endpoint, &["status", "--format", "json"]);
        assert_eq!(code, Some(0), "{out}\n{err}");
        assert!(out.contains("Service Manager Agent Status"), "{out}");
        assert_eq!(old_agent.got(), ["manager.status", "agent.status"]);
    });
}
