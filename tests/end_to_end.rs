//! Manager, agents and client as separate processes on loopback.

use crate::util::*;
use serde_json::Value;

fn nodes(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"]["node"].as_str().or(r["node"].as_str()).unwrap().to_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn status_reaches_exactly_the_topic() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a1 = agent(&mgr, "web1", &fake, &["--topics", "web"]);
        let _a10 = agent(&mgr, "web10", &fake, &["--topics", "web"]);
        let _db = agent(&mgr, "db1", &fake, &["--topics", "db"]);
        // Exact topic: web1 never runs web10's request.
        let (_, v) = client(&mgr, "web10", "status", "nginx", &["-w", "5"]);
        assert_eq!(nodes(&v), ["web10"]);
        let (_, v) = client(&mgr, "web", "status", "nginx", &["-w", "5"]);
        assert_eq!(nodes(&v), ["web1", "web10"]);
        let (_, v) = client(&mgr, "any", "status", "nginx", &["-w", "5"]);
        assert_eq!(nodes(&v), ["db1", "web1", "web10"]);
        // A prefix of a topic reaches no one.
        let (_, v) = client(&mgr, "we", "status", "nginx", &["-w", "0.5"]);
        assert_eq!(nodes(&v), Vec::<String>::new());
        let r = &v.as_array().map(|_| ()).is_some();
        assert!(r);
    });
}

#[test]
fn result_has_the_01_shape() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let (_, v) = client(&mgr, "n1", "status", "stopped-svc", &["-w", "5"]);
        let r = &v[0];
        assert_eq!(r["msg"], "Executed service status request");
        assert!(r["uuid"].as_str().unwrap().len() == 32);
        let res = &r["result"];
        assert_eq!(res["node"], "n1");
        assert_eq!(res["service"], "stopped-svc");
        assert_eq!(res["returncode"], 3);
        assert_eq!(res["stdout"], "stopped-svc is not running\n");
        assert_eq!(res["stderr"], "");
        assert!(res["system"].is_string() && res["version"].is_string());
        assert_eq!(calls(dir.path()), ["stopped-svc status"]);
    });
}

#[test]
fn hostile_names_and_commands_run_nothing() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        for (cmd, svc) in [("status", "../x"), ("status", "-h"), ("status", "a;b"), ("rm", "sshd")] {
            let ep = mgr.ep("frontend_endpoint");
            let out = run(&["client", "-e", &ep, "-T", "n1", "-c", cmd, "-s", svc, "-w", "1"]);
            // The manager refuses before dispatching: a clear error, non-zero exit.
            let err = String::from_utf8_lossy(&out.stderr);
            if cmd == "rm" {
                // A well-formed word the agent does not allow: refused by the agent.
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(v[0]["status"], "refused", "{v}");
                assert!(v[0]["msg"].as_str().unwrap().contains("not allowed"));
            } else {
                assert_eq!(out.status.code(), Some(1), "{svc}: {err}");
                assert!(err.contains("service name"), "{err}");
            }
        }
        assert!(calls(dir.path()).is_empty(), "something ran: {:?}", calls(dir.path()));
    });
}
