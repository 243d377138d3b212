//! Limits before parsing (issue 11 point 6): what a stranger who reaches the
//! ports, with no key, could do to the manager before these limits, each
//! tried here on the real manager with raw zmq sockets.

use crate::util::*;

use serde_json::json;
use std::time::{Duration, Instant};

/// A raw ZMTP 3.0 peer of type XSUB over plain TCP: sends subscriptions of
/// any length (libzmq's own XSUB keeps them in a recursive trie that
/// overflows a test's stack for long topics).
struct RawXsub(std::net::TcpStream);

impl RawXsub {
    fn connect(endpoint: &str) -> RawXsub {
        use std::io::Write;
        let addr = endpoint.strip_prefix("tcp://").unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut greeting = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0];
        let mut mechanism = b"NULL".to_vec();
        mechanism.resize(20, 0);
        greeting.extend(mechanism);
        greeting.resize(64, 0);
        s.write_all(&greeting).unwrap();
        let mut ready = b"\x05READY\x0bSocket-Type".to_vec();
        ready.extend(4u32.to_be_bytes());
        ready.extend(b"XSUB");
        s.write_all(&[0x04, ready.len() as u8]).unwrap();
        s.write_all(&ready).unwrap();
        RawXsub(s)
    }

    /// Send `[1, topic]`; false once the manager closed the connection.
    fn subscribe(&mut self, topic: &[u8]) -> bool {
        use std::io::Write;
        let size = topic.len() as u64 + 1;
        let mut frame = if size < 256 {
            vec![0x00, size as u8]
        } else {
            let mut f = vec![0x02];
            f.extend(size.to_be_bytes());
            f
        };
        frame.push(1);
        frame.extend_from_slice(topic);
        self.0.write_all(&frame).is_ok()
    }
}

/// A management request must be answered within `secs` seconds.
fn answered_within(mgr: &Proc, secs: u64, after: &str) {
    let ctx = zmq::Context::new();
    let req = connect(&ctx, zmq::REQ, &mgr.ep("mgmt_endpoint"));
    let started = Instant::now();
    req.send(json!({"cmd": "manager.status"}).to_string().as_bytes(), 0)
        .unwrap();
    let reply = recv_within(&req, secs as i64 * 1000).unwrap_or_else(|| {
        panic!("after {after}: no answer to manager.status within {secs} s (stalled)")
    });
    assert_eq!(json(&reply[0])["success"], 0, "after {after}");
    assert!(started.elapsed() < Duration::from_secs(secs));
}

/// A 0.1 request for `node` on the frontend; its job id.
fn raw_request(mgr: &Proc, node: &str) -> String {
    let request = json!({"cmd": "status", "service": "svc", "topic": node});
    let reply = json(&req_raw(
        &mgr.ep("frontend_endpoint"),
        request.to_string().as_bytes(),
    ));
    reply["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("no uuid: {reply}"))
        .to_owned()
}

// Regression: one 150 MiB JSON frame on the sink (parsed into a Value before any
// check) aborted the manager; 40 MiB took it to 1.5 GB RSS and stalled it 3.5 s.
#[test]
fn big_sink_frame_neither_kills_nor_bloats_the_manager() {
    with_timeout(120, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager_compat(&[]);
        let _agent = compat_agent(&mgr, "n1", &fake);
        let ctx = zmq::Context::new();
        let push = connect(&ctx, zmq::PUSH, &mgr.ep("sink_endpoint"));
        push.set_linger(5000).unwrap();
        // Nested arrays in routing fields: cheap to send, costly as a Value.
        let hostile = |mib: usize| {
            let mut f = br#"{"uuid": "0123456789abcdef0123456789abcdef", "node": ["#.to_vec();
            let n = mib * 1024 * 1024 / 4;
            f.reserve(n * 4 + 100);
            for _ in 0..n {
                f.extend_from_slice(b"[0],");
            }
            f.extend_from_slice(br#"0], "auth": [[[0]]]}"#);
            f
        };
        let started = Instant::now();
        let step = |what: &str| eprintln!("{:>6.1?} {what}", started.elapsed());
        // Under the sink's limit: decoded, refused, nothing kept.
        push.send(hostile(30), 0).unwrap();
        // Over it: libzmq drops the connection before allocating it.
        push.send(hostile(40), 0).unwrap();
        step("sent");
        std::thread::sleep(Duration::from_secs(2));
        // Both went out by now; nothing to wait for while the PUSH reconnects
        // to a manager that cut it (CI once ran out its 120 s here or later;
        // the steps say where, next time).
        push.set_linger(0).unwrap();
        drop(push);
        drop(ctx);
        step("push closed");
        answered_within(&mgr, 3, "big sink frames");
        step("manager answered");
        assert_serves(&mut mgr, "n1", "big sink frames");
        step("manager served n1");
        let peak = mem_mib(mgr.pid(), "VmHWM");
        assert!(
            peak < 400,
            "the manager's memory peaked at {peak} MiB for 70 MiB of frames"
        );
    });
}

// Regression: an XSUB sending 80 subscriptions of 1 MiB to the backend made
// libzmq run out of memory (each byte a trie node), and nothing capped how
// many subscriptions one connection made.
#[test]
fn big_and_many_backend_subscriptions_are_refused() {
    with_timeout(120, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager_compat(&[]);
        let _agent = compat_agent(&mgr, "n1", &fake);
        let ctx = zmq::Context::new();
        for i in 0..10u8 {
            let mut raw = RawXsub::connect(&mgr.ep("backend_endpoint"));
            let mut topic = vec![b'a' + i];
            topic.resize(1024 * 1024, b'x');
            raw.subscribe(&topic);
        }
        std::thread::sleep(Duration::from_secs(1));
        let many = connect(&ctx, zmq::XSUB, &mgr.ep("backend_endpoint"));
        for i in 0..100_000u32 {
            many.send(format!("\x01topic-{i:08}").as_bytes(), 0)
                .unwrap();
        }
        std::thread::sleep(Duration::from_secs(2));
        let rss = mem_mib(mgr.pid(), "VmRSS");
        assert!(
            rss < 150,
            "the manager holds {rss} MiB after the subscriptions"
        );
        // Connections that come and go must not each walk a huge trie.
        for _ in 0..100 {
            let s = connect(&ctx, zmq::SUB, &mgr.ep("backend_endpoint"));
            s.set_subscribe(b"any").unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        // A debug manager on 2 shared cores may still be refusing the flood's
        // tail (one full run saw > 3 s beside the 1,000-agent drop test); the
        // regression was no answer at all.
        answered_within(&mgr, 10, "100,000 backend subscriptions");
        // The agent's connection came from the same address and was closed
        // with the flood's; it reconnects.
        wait_registered(&mgr, "n1");
        assert_serves(&mut mgr, "n1", "big and many backend subscriptions");
        assert!(
            mgr.log_text()
                .contains("too many subscriptions from one connection"),
            "{}",
            mgr.log_text()
        );
    });
}

// Regression: one connection subscribed 100,000 random topics to the result
// publisher, then 300 short connections subscribed once and closed: the next
// management request was answered after 235 s.
#[test]
fn subscribe_churn_on_the_result_publisher_does_not_stall_the_manager() {
    with_timeout(120, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager_compat(&[]);
        let _agent = compat_agent(&mgr, "n1", &fake);
        let ctx = zmq::Context::new();
        let results = mgr.ep("result_endpoint");
        let xsub = connect(&ctx, zmq::XSUB, &results);
        for i in 0..100_000u32 {
            let topic = format!("\x01{:032x}", (i as u128).wrapping_mul(0x9e3779b97f4a7c15));
            xsub.send(topic.as_bytes(), 0).unwrap();
        }
        std::thread::sleep(Duration::from_secs(1));
        for i in 0..300 {
            let s = connect(&ctx, zmq::SUB, &results);
            s.set_subscribe(format!("{i:032x}").as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        answered_within(&mgr, 3, "subscribe churn on the result publisher");
        assert_serves(&mut mgr, "n1", "subscribe churn on the result publisher");
    });
}

// Regression: re-subscribing to a job's id on the result publisher without
// reading had every stored result republished per subscription (SNDHWM
// 100,000) until libzmq's allocation failed.
#[test]
fn resubscribing_to_a_job_does_not_replay_its_results_again() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager_compat(&[]);
        let _agent = compat_agent(&mgr, "n1", &fake);
        let uuid = raw_request(&mgr, "n1");
        let ctx = zmq::Context::new();
        let results = mgr.ep("result_endpoint");
        // The client's own subscription gets the result.
        let sub = connect(&ctx, zmq::SUB, &results);
        sub.set_subscribe(uuid.as_bytes()).unwrap();
        let first = recv_within(&sub, 10_000).expect("the job's result");
        assert_eq!(first[0], uuid.as_bytes());
        // A connection that subscribes over and over and never reads.
        let xsub = connect(&ctx, zmq::XSUB, &results);
        for _ in 0..1000 {
            xsub.send([&[1u8][..], uuid.as_bytes()].concat(), 0)
                .unwrap();
            xsub.send([&[0u8][..], uuid.as_bytes()].concat(), 0)
                .unwrap();
        }
        xsub.send([&[1u8][..], uuid.as_bytes()].concat(), 0)
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let mut got = 0;
        while recv_within(&xsub, 500).is_some() {
            got += 1;
        }
        // (None at all when libzmq had read its unsubscription too before the
        // one replay went out: it gets no second.)
        assert!(
            got <= 2,
            "1001 subscriptions of one connection got {got} copies of one result"
        );
        // The client's connection was not sent it again either.
        let mut again = 0;
        while recv_within(&sub, 200).is_some() {
            again += 1;
        }
        assert!(again <= 1, "the client got the result {again} more times");
    });
}

// Regression: `manager.jobs` took any limit and `manager.job` (and `client
// --job`) answered every stored result in one reply, however many and big.
#[test]
fn job_list_and_job_reads_come_in_pages() {
    with_timeout(120, || {
        // Where the time goes, printed with a failure (a CI run once timed out here).
        let t0 = std::time::Instant::now();
        let step = |what: &str| eprintln!("{:>6} ms: {what}", t0.elapsed().as_millis());
        let mgr = manager_compat(&[]);
        step("manager up");
        let mgmt_ep = mgr.ep("mgmt_endpoint");
        let ctx = zmq::Context::new();
        let push = connect(&ctx, zmq::PUSH, &mgr.ep("sink_endpoint"));
        push.set_linger(5000).unwrap();
        // Results for jobs the manager does not know are stored as jobs too.
        let result = |uuid: &str, node: &str, out: &str| {
            json!({"msg": "Executed service status request", "uuid": uuid, "node": node,
                   "result": {"node": node, "service": "s", "returncode": 0,
                              "stdout": out, "stderr": "", "system": "Linux", "version": "1"}})
            .to_string()
        };
        let wide = "a".repeat(32);
        for i in 0..1500 {
            push.send(result(&wide, &format!("n{i:04}"), "ok").as_bytes(), 0)
                .unwrap();
        }
        let big = "b".repeat(32);
        let mib = "x".repeat(1024 * 1024);
        for i in 0..20 {
            push.send(result(&big, &format!("n{i:02}"), &mib).as_bytes(), 0)
                .unwrap();
        }
        for i in 0..100 {
            push.send(result(&format!("{i:032x}"), "n1", "ok").as_bytes(), 0)
                .unwrap();
        }
        step("results sent");
        let job = |uuid: &str, offset: Option<usize>| {
            mgmt_req(
                &mgmt_ep,
                json!({"cmd": "manager.job", "uuid": uuid, "offset": offset}),
            )
        };
        wait_for(30, "every result to be stored", || {
            let r = job(&wide, None);
            (r["result"]["results_total"] == 1500).then_some(())
        });
        step("1500 results stored");
        // A job's results: 1000 a page by default, the reply says where the next starts.
        let first = job(&wide, None);
        assert_eq!(first["result"]["results"].as_array().unwrap().len(), 1000);
        assert_eq!(first["next"], 1000, "{}", first["msg"]);
        let last = job(&wide, Some(1000));
        assert_eq!(last["result"]["results"].as_array().unwrap().len(), 500);
        assert!(last.get("next").is_none(), "{}", last["msg"]);
        assert_eq!(last["result"]["results"][0]["node"], "n1000");
        // Big results: a page holds about 8 MiB of them.
        wait_for(30, "the big results to be stored", || {
            (job(&big, None)["result"]["results_total"] == 20).then_some(())
        });
        step("big results stored");
        let page = job(&big, None);
        let n = page["result"]["results"].as_array().unwrap().len();
        assert!((1..=8).contains(&n), "a page of {n} results of 1 MiB");
        assert_eq!(page["next"], n);
        // The job list: 50 a page by default, at most 1000 whatever the limit.
        let jobs = |req: serde_json::Value| mgmt_req(&mgmt_ep, req);
        let page = jobs(json!({"cmd": "manager.jobs"}));
        assert_eq!(page["result"].as_array().unwrap().len(), 50);
        assert_eq!(page["next"], 50);
        let page = jobs(json!({"cmd": "manager.jobs", "limit": 1_000_000_000u64}));
        assert_eq!(page["result"].as_array().unwrap().len(), 102);
        assert!(page.get("next").is_none());
        let page = jobs(json!({"cmd": "manager.jobs", "limit": 40, "offset": 80}));
        assert_eq!(page["result"].as_array().unwrap().len(), 22);
        assert!(page.get("next").is_none());
        step("job list read");
        // The command line says how to get the next page.
        let out = run(&[
            "mgmt",
            "-e",
            &mgmt_ep,
            "--server-key",
            "plaintext",
            "jobs",
            "--format",
            "table",
            "--limit",
            "10",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("--offset 10"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        step("mgmt jobs run");
        // client --job gets every page.
        let (out, doc) = Client::new(&mgr).unsigned().arg("--job").arg(&wide).run();
        assert_eq!(
            doc["results"].as_array().map(Vec::len),
            Some(1500),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}
