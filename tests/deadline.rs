//! Requests carry the client's deadline for the manager's accept
//! (`accept_by`, signed): once the client stopped waiting, neither the
//! manager nor an agent runs them, and the client says it was not run.

use crate::util::*;
use service_mgr::protocol::{self as p, RequestBody, ServiceRequest};
use service_mgr::security::{self, KeyPair, Purpose};
use std::path::Path;
use std::time::Duration;

/// `restart ghost` on `n1`, signed by `key`, with the client's deadline `accept_by`.
fn request_until(key: &KeyPair, accept_by: u64) -> Vec<u8> {
    let mut req = ServiceRequest::new("restart", "ghost", "n1");
    let mut body = RequestBody::for_request(
        &req,
        uuid::Uuid::new_v4().simple().to_string(),
        service_mgr::clock::now_ms(),
        key.public().to_string(),
    );
    body.accept_by = Some(accept_by);
    req.auth = Some(security::sign(key, Purpose::Request, &body));
    p::encode(&req)
}

/// Calls of the fake service within `secs` (returns at the first).
fn calls_within(dir: &Path, secs: u64) -> Vec<String> {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let c = calls(dir);
        if !c.is_empty() || std::time::Instant::now() >= until {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(pid: i32) {
    // SAFETY: kill(2) on a daemon this test started and still holds.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
}

fn resume(pid: i32) {
    // SAFETY: as in `stop`.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}

/// Issue 13.3: a client gave up on a stalled manager ("is the daemon running?"), and the
/// request it had sent ran after the stall: the operator's retry ran it a second time.
#[test]
fn a_request_the_client_gave_up_on_is_not_run_after_a_manager_stall() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        wait_registered(&mgr, "n1");
        let alice = KeyPair::load(Path::new(&mgr.pki.as_ref().unwrap().client_key())).unwrap();
        // A connection that completed its handshake before the stall: the request
        // waits in the manager's socket until it runs again.
        let ctx = zmq::Context::new();
        let s = connect(&ctx, zmq::REQ, &mgr.ep("frontend_endpoint"));
        s.send(p::encode(&p::FollowRequest::new(&"0".repeat(32))), 0)
            .unwrap();
        recv_within(&s, 5000).expect("the manager answers before the stall");
        stop(mgr.pid());
        let sent = service_mgr::clock::now_ms();
        s.send(request_until(&alice, sent + 300), 0).unwrap();
        std::thread::sleep(Duration::from_millis(800));
        resume(mgr.pid());
        assert_eq!(calls_within(dir.path(), 3), Vec::<String>::new());
        let reply = json(&recv_within(&s, 5000).expect("the manager answers")[0]);
        let msg = error_msg(&reply);
        assert!(msg.contains("after the client's deadline"), "{msg}");
        assert!(msg.contains("nothing was run"), "{msg}");

        // The real client against the stalled manager: it gives up and says it was not run.
        stop(mgr.pid());
        let out = Client::new(&mgr)
            .topic("n1")
            .cmd("restart")
            .service("ghost")
            .arg("-t")
            .arg("300")
            .arg("-r")
            .arg("2")
            .output();
        resume(mgr.pid());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("did not accept the request within 600 ms; it was not run"),
            "{stderr}"
        );
        assert_eq!(calls_within(dir.path(), 2), Vec::<String>::new());

        // The manager serves again: the same request, waited for, runs once.
        let (out, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("restart")
            .service("ghost")
            .run();
        assert_eq!(out.status.code(), Some(0), "{doc}");
        assert_eq!(calls(dir.path()), ["ghost restart"]);
    });
}

/// Issue 13.3: an agent runs nothing the client stopped waiting for, whoever held it
/// (here the agent itself was stalled while the manager dispatched).
#[test]
fn an_agent_refuses_a_dispatch_that_comes_after_the_clients_deadline() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let a = agent(&mgr, "n1", &fake, &[]);
        wait_registered(&mgr, "n1");
        let alice = KeyPair::load(Path::new(&mgr.pki.as_ref().unwrap().client_key())).unwrap();
        stop(a.pid());
        let reply = json(&req_raw(
            &mgr.ep("frontend_endpoint"),
            &request_until(&alice, service_mgr::clock::now_ms() + 300),
        ));
        assert!(reply["uuid"].is_string(), "{reply}");
        std::thread::sleep(Duration::from_millis(800));
        resume(a.pid());
        assert_eq!(calls_within(dir.path(), 3), Vec::<String>::new());
        let job = reply["uuid"].as_str().unwrap().to_owned();
        wait_for(10, "the agent's refusal in the job store", || {
            let r = mgmt_req(
                &mgr.ep("mgmt_endpoint"),
                serde_json::json!({"cmd": "manager.job", "uuid": job}),
            );
            (r["result"]["results"][0]["status"] == "refused").then_some(())
        });
    });
}

/// Issue 13.3: when the request reached a manager whose answer never came, the client
/// cannot say it was not run: it says it may have been dispatched, and names the
/// request (it never learned the job id). The request carries its deadline, signed.
#[test]
fn a_client_whose_request_reached_the_manager_says_it_may_have_run() {
    with_timeout(60, || {
        let real = manager(&[]);
        let pki = real.pki.as_ref().unwrap();
        // A manager that holds the real key, takes the request and never answers.
        let key = KeyPair::load(Path::new(&pki.path("state/manager.key"))).unwrap();
        let ctx = zmq::Context::new();
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        router.set_curve_server(true).unwrap();
        router.set_curve_secretkey(&key.curve_secret()).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let silent = router.get_last_endpoint().unwrap().unwrap();
        let out = Client::at(&silent)
            .key(&pki.client_key())
            .env("SERVICE_MGR_MANAGER_KEY", real.ep("manager_key").as_str())
            .topic("n1")
            .cmd("restart")
            .service("ghost")
            .arg("-t")
            .arg("300")
            .arg("-r")
            .arg("2")
            .output();
        let frames = recv_within(&router, 1000).expect("the request reached the manager");
        let req = ServiceRequest::decode(frames.last().unwrap()).unwrap();
        let body = RequestBody::from_signed(&req.auth.unwrap().body).unwrap();
        assert_eq!(
            body.accept_by,
            Some(body.ts + 600),
            "-r 2 tries of -t 300 ms"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr
                .contains("did not accept the request within 600 ms. It may have been dispatched"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("request id {}", body.id)),
            "{stderr}"
        );
        assert!(!stderr.contains("it was not run"), "{stderr}");
    });
}
