//! Manager, agents and client as separate processes on loopback.

use crate::util::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// (node, status) of every entry of a client document, sorted by node.
fn outcome(doc: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = doc["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {doc}"))
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn oks(nodes: &[&str]) -> Vec<(String, String)> {
    nodes
        .iter()
        .map(|n| (n.to_string(), "ok".to_string()))
        .collect()
}

#[test]
fn status_reaches_exactly_the_topic_and_returns_without_waiting() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a1 = agent(&mgr, "web1", &fake, &["--topics", "web"]);
        let _a10 = agent(&mgr, "web10", &fake, &["--topics", "web"]);
        let _db = agent(&mgr, "db1", &fake, &["--topics", "db"]);
        let started = Instant::now();
        // Exact topic: web1 never runs web10's request.
        let (out, doc) = Client::new(&mgr)
            .topic("web10")
            .cmd("status")
            .service("nginx")
            .run();
        assert_eq!(outcome(&doc), oks(&["web10"]));
        assert_eq!(doc["expected"], serde_json::json!(["web10"]));
        assert_eq!(out.status.code(), Some(0));
        let (_, doc) = Client::new(&mgr)
            .topic("web")
            .cmd("status")
            .service("nginx")
            .run();
        assert_eq!(outcome(&doc), oks(&["web1", "web10"]));
        let (_, doc) = Client::new(&mgr)
            .topic("any")
            .cmd("status")
            .service("nginx")
            .run();
        assert_eq!(outcome(&doc), oks(&["db1", "web1", "web10"]));
        assert_eq!(doc["summary"]["answered"], 3);
        // The default -w is 60 s: these returned because every expected node answered.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        // A prefix of a topic reaches no one, and says so with exit 4 and the job id.
        let (out, doc) = Client::new(&mgr)
            .topic("we")
            .cmd("status")
            .service("nginx")
            .run();
        assert_eq!(out.status.code(), Some(4));
        assert!(doc["job"].as_str().unwrap().len() == 32);
        assert_eq!(doc["results"], serde_json::json!([]));
    });
}

#[test]
fn nodes_lists_globs_and_unknown_nodes() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a =
            ["web1", "web2", "web10", "db1"].map(|n| agent(&mgr, n, &fake, &["--topics", "grp"]));
        let (_, doc) = Client::new(&mgr)
            .nodes("web1,db1")
            .cmd("status")
            .service("x")
            .run();
        assert_eq!(outcome(&doc), oks(&["db1", "web1"]));
        let (_, doc) = Client::new(&mgr)
            .glob("web?")
            .cmd("status")
            .service("x")
            .run();
        assert_eq!(outcome(&doc), oks(&["web1", "web2"]));
        let (_, doc) = Client::new(&mgr)
            .topic("grp")
            .glob("web*")
            .nodes("web10,db1")
            .cmd("status")
            .service("x")
            .run();
        assert_eq!(outcome(&doc), oks(&["web10"]));
        // A named node that does not exist is reported, not silently dropped.
        let (out, doc) = Client::new(&mgr)
            .nodes("web1,ghost")
            .cmd("status")
            .service("x")
            .wait("1")
            .run();
        assert_eq!(
            outcome(&doc),
            [
                ("ghost".into(), "no_response".into()),
                ("web1".into(), "ok".into())
            ]
        );
        assert_eq!(out.status.code(), Some(4));
    });
}

#[test]
fn result_has_the_01_shape_and_a_state() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let (out, v) = Client::new(&mgr)
            .topic("n1")
            .cmd("status")
            .service("stopped-svc")
            .format("legacy")
            .run();
        assert_eq!(out.status.code(), Some(3), "a stopped service is not ok");
        let r = &v[0];
        assert_eq!(r["msg"], "Executed service status request");
        assert!(r["uuid"].as_str().unwrap().len() == 32);
        let res = &r["result"];
        assert_eq!(res["node"], "n1");
        assert_eq!(res["service"], "stopped-svc");
        assert_eq!(res["returncode"], 3);
        // As 0.1 sent them: lists of lines, `out.split('\n')` (issue 15).
        assert_eq!(
            res["stdout"],
            serde_json::json!(["stopped-svc is not running", ""])
        );
        assert_eq!(res["stderr"], serde_json::json!([""]));
        assert!(res["system"].is_string() && res["version"].is_string());
        assert_eq!(r["state"], "stopped");
        assert_eq!(calls(dir.path()), ["stopped-svc status"]);
    });
}

#[test]
fn hostile_names_and_commands_run_nothing() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager_compat(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        for svc in ["../x", "-h", "a;b", ""] {
            let (out, _) = Client::new(&mgr)
                .topic("n1")
                .cmd("status")
                .service(svc)
                .text();
            // The client refuses before sending (issue 15: a usage error, exit 2) ...
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{svc}: {err}");
            assert!(err.contains("service name"), "{err}");
            // ... and the manager refuses before dispatching what another client sends.
            let request = serde_json::json!({"topic": "n1", "cmd": "status", "service": svc});
            let reply = json(&req_raw(
                &mgr.ep("frontend_endpoint"),
                request.to_string().as_bytes(),
            ));
            assert!(error_msg(&reply).contains("service name"), "{svc}: {reply}");
        }
        // A well-formed command word the agent does not allow: refused by the agent.
        let (out, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("rm")
            .arg("--custom")
            .service("sshd")
            .run();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(doc["results"][0]["status"], "refused", "{doc}");
        assert!(doc["results"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("not allowed"));
        assert!(
            calls(dir.path()).is_empty(),
            "something ran: {:?}",
            calls(dir.path())
        );
    });
}

#[test]
fn killed_agent_is_reported_as_no_response_within_seconds() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _ok = agent(&mgr, "fine", &fake, &[]);
        let mut victim = agent(&mgr, "victim", &fake, &[]);
        let started = Instant::now();
        let child = Client::new(&mgr)
            .nodes("victim")
            .cmd("start")
            .service("slow-svc")
            .spawn();
        // Wait until the victim runs the command, then kill -9 it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls(dir.path()).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the agents never ran the command"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        unsafe { libc::kill(victim.pid(), libc::SIGKILL) };
        victim.wait_exit(5);
        // The client reports the victim as soon as the manager notices; it does not hang.
        let out = child.output();
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let victim_entry = doc["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == "victim")
            .unwrap()
            .clone();
        assert_eq!(victim_entry["status"], "no_response", "{doc}");
        assert!(
            victim_entry["msg"]
                .as_str()
                .unwrap()
                .contains("connection dropped"),
            "{victim_entry}"
        );
        assert_eq!(out.status.code(), Some(4));
        // Its command would have run 30 s; the verdict came within seconds.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
    });
}

#[test]
fn manager_restart_agents_come_back_by_themselves() {
    with_timeout(90, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let _b = agent(&mgr, "n2", &fake, &[]);
        let mgr2 = restart_manager(&mut mgr);
        wait_registered(&mgr2, "n1");
        wait_registered(&mgr2, "n2");
        let (_, doc) = Client::new(&mgr2)
            .topic("any")
            .cmd("status")
            .service("x")
            .run();
        assert_eq!(outcome(&doc), oks(&["n1", "n2"]));
    });
}

#[test]
fn rolling_restart_in_batches_with_fail_fast() {
    with_timeout(90, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a =
            ["w1", "w2", "w3", "w4", "w5"].map(|n| agent(&mgr, n, &fake, &["--topics", "web"]));
        let (out, doc) = Client::new(&mgr)
            .topic("web")
            .cmd("restart")
            .service("nginx")
            .arg("--batch")
            .arg("2")
            .run();
        assert_eq!(out.status.code(), Some(0), "{doc}");
        assert_eq!(doc["jobs"].as_array().unwrap().len(), 3);
        assert_eq!(outcome(&doc), oks(&["w1", "w2", "w3", "w4", "w5"]));
        // The calls came in batches: never more than 2 nodes in one job.
        assert_eq!(calls(dir.path()).len(), 5);
        // fail-fast: the first batch fails, the rest is skipped and reported.
        let (out, doc) = Client::new(&mgr)
            .topic("web")
            .cmd("restart")
            .service("fail-svc")
            .arg("--batch")
            .arg("40%")
            .arg("--fail-fast")
            .run();
        assert_eq!(out.status.code(), Some(3));
        let o = outcome(&doc);
        assert_eq!(o.iter().filter(|(_, s)| s == "failed").count(), 2, "{o:?}");
        assert_eq!(o.iter().filter(|(_, s)| s == "skipped").count(), 3, "{o:?}");
    });
}

#[test]
fn a_later_client_can_follow_a_job() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let _b = agent(&mgr, "n2", &fake, &[]);
        let (_, doc) = Client::new(&mgr)
            .topic("any")
            .cmd("status")
            .service("x")
            .run();
        let job = doc["job"].as_str().unwrap().to_owned();
        let (out, again) = Client::new(&mgr).arg("--job").arg(&job).run();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(outcome(&again), oks(&["n1", "n2"]));
        assert_eq!(again["job"], job.as_str());
        let listed = mgmt(&mgr.ep("mgmt_endpoint"), "manager.jobs");
        assert_eq!(listed["result"][0]["uuid"], job.as_str(), "{listed}");
    });
}

#[test]
fn restarting_the_agents_own_service_answers_first() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let (out, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("restart")
            .service("service-mgr-agentd")
            .run();
        assert_eq!(out.status.code(), Some(0), "{doc}");
        assert!(
            doc["results"][0]["msg"]
                .as_str()
                .unwrap()
                .contains("Scheduled"),
            "{doc}"
        );
        // The command itself runs a moment after the answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls(dir.path()).is_empty() {
            assert!(Instant::now() < deadline, "the restart never ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(calls(dir.path()), ["service-mgr-agentd restart"]);
    });
}

/// 1000 requests to 3 agents that answer at once, by a raw client that
/// subscribes only after it has the job id (0.1's order): no result is lost.
#[test]
fn thousand_requests_lose_no_result() {
    with_timeout(120, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("true");
        std::os::unix::fs::symlink("/bin/true", &fake).unwrap();
        // A 0.1 client signs nothing: a manager and agents that serve it.
        let mgr = manager_compat(&[]);
        let _a = ["a1", "a2", "a3"].map(|n| agent(&mgr, n, &fake, &["-O", "allow_unsigned=true"]));
        let ctx = zmq::Context::new();
        let port_host = "tcp://127.0.0.1";
        let mut received = 0;
        for _ in 0..1000 {
            let reply = req_raw(
                &mgr.ep("frontend_endpoint"),
                br#"{"cmd": "status", "service": "x", "topic": "any"}"#,
            );
            let acc: Value = serde_json::from_slice(&reply).unwrap();
            let uuid = acc["uuid"].as_str().unwrap();
            let sub = ctx.socket(zmq::SUB).unwrap();
            sub.set_linger(0).unwrap();
            sub.set_rcvtimeo(5000).unwrap();
            sub.set_subscribe(uuid.as_bytes()).unwrap();
            sub.connect(&format!("{port_host}:{}", acc["port"]))
                .unwrap();
            for _ in 0..3 {
                let frames = sub.recv_multipart(0).expect("a result was lost");
                assert_eq!(frames[0], uuid.as_bytes());
                received += 1;
            }
        }
        assert_eq!(received, 3000);
    });
}

#[test]
fn late_results_are_kept_and_jobs_survive_a_manager_restart() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        // The client gives up before the node answers.
        let (out, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("restart")
            .service("nap-svc")
            .wait("0.2")
            .run();
        assert_eq!(out.status.code(), Some(4), "{doc}");
        let job = doc["job"].as_str().unwrap().to_owned();
        // The answer arrives later and is kept by the manager.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = mgmt_req(
                &mgr.ep("mgmt_endpoint"),
                serde_json::json!({"cmd": "manager.job", "uuid": job}),
            );
            if r["result"]["results"][0]["status"] == "ok" {
                break;
            }
            assert!(Instant::now() < deadline, "late result not kept: {r}");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Restart the manager on the same state: the job and its result are still there.
        let mgr2 = restart_manager(&mut mgr);
        wait_registered(&mgr2, "n1");
        let (out, again) = Client::new(&mgr2).arg("--job").arg(&job).run();
        assert_eq!(out.status.code(), Some(0), "{again}");
        assert_eq!(outcome(&again), oks(&["n1"]));
        assert!(
            again["results"][0]["result"]["stdout"]
                .as_str()
                .unwrap()
                .contains("woke up"),
            "{again}"
        );
        let listed = mgmt(&mgr2.ep("mgmt_endpoint"), "manager.jobs");
        assert_eq!(listed["result"][0]["uuid"], job.as_str(), "{listed}");
    });
}

/// Issue 11: each request cost two CURVE handshakes in sequence (the REQ, then a SUB
/// to the result publisher after the accept). A request with `attach` gets the accept
/// and then its results on the one connection that carried it; nothing subscribes.
#[test]
fn results_come_on_the_connection_that_asked() {
    use service_mgr::protocol::{self as p, RequestBody, ServiceRequest};
    use service_mgr::security::{self, KeyPair, Purpose};
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        wait_registered(&mgr, "n1");
        let alice = KeyPair::load(std::path::Path::new(
            &mgr.pki.as_ref().unwrap().client_key(),
        ))
        .unwrap();
        let mut req = ServiceRequest::new("status", "nginx", "n1");
        let body = RequestBody::for_request(
            &req,
            uuid::Uuid::new_v4().simple().to_string(),
            service_mgr::clock::now_ms(),
            alice.public().to_string(),
        );
        req.auth = Some(security::sign(&alice, Purpose::Request, &body));
        req.attach = true;
        let ctx = zmq::Context::new();
        let dealer = connect(&ctx, zmq::DEALER, &mgr.ep("frontend_endpoint"));
        dealer
            .send_multipart([&b""[..], &p::encode(&req)], 0)
            .unwrap();
        let accept = recv_within(&dealer, 5000).expect("the accept");
        assert_eq!(accept.len(), 2, "[\"\", accept]");
        let accept = json(&accept[1]);
        assert_eq!(accept["attached"], true, "{accept}");
        let uuid = accept["uuid"].as_str().unwrap().to_owned();
        let result = recv_within(&dealer, 10_000).expect("the result on the same connection");
        assert_eq!(result.len(), 3, "[\"\", uuid, result]");
        assert_eq!(result[1], uuid.as_bytes());
        let r = json(&result[2]);
        assert_eq!(r["node"], "n1", "{r}");
        assert_eq!(r["status"], "ok", "{r}");
    });
}
