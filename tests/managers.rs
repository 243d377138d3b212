//! Several active managers (issue 14, points 1 and 2): agents connected to
//! each, a request retried through a second manager running once on every
//! node, a job (and a `--batch` rollout) going on through another manager
//! when the one that dispatched it is killed, `--job` from any manager.
//! Embedded job stores: nothing here needs PostgreSQL.

use crate::util::*;
use serde_json::Value;
use service_mgr::protocol::{self as p, RequestBody, ServiceRequest};
use service_mgr::security::{self, KeyPair, Purpose};
use std::path::Path;
use std::time::{Duration, Instant};

/// A second manager of `first`'s deployment: the same key pair and key
/// store (a symlink: keys accepted once count on both), its own state and
/// job store, fresh loopback ports.
fn second(first: &Proc) -> Proc {
    let pki = first.pki.as_ref().unwrap();
    let state = tempfile::tempdir().unwrap().keep();
    std::os::unix::fs::symlink(pki.path("state/keys"), state.join("keys")).unwrap();
    let state_dir = format!("state_dir={}", toml_str(&state.display().to_string()));
    let key_file = format!("key_file={}", toml_str(&pki.path("state/manager.key")));
    let endpoints = MANAGER_ENDPOINTS.map(|k| format!("{k}={LOOPBACK}"));
    let mut args = vec!["daemon", "-D", "-f", "/dev/null", "-O", &state_dir];
    args.extend(["-O", &key_file, "-O", r#"mgmt_admin_keys=["tester"]"#]);
    for e in &endpoints {
        args.extend(["-O", e.as_str()]);
    }
    let p = spawn_ready(&args);
    register_manager(&p, pki);
    assert_eq!(p.ready["manager_key"], first.ready["manager_key"]);
    p
}

/// The agents' `manager_endpoint` for both managers.
fn both(m1: &Proc, m2: &Proc, key: &str) -> String {
    format!(
        "{key}={}",
        toml_str(&format!("{},{}", m1.ep(key), m2.ep(key)))
    )
}

/// An agent `node` of topic web on both managers, up on each.
fn agent_of_both(m1: &Proc, m2: &Proc, node: &str, fake: &Path) -> Proc {
    let managers =
        both(m1, m2, "backend_endpoint").replacen("backend_endpoint", "manager_endpoint", 1);
    let a = agent(m1, node, fake, &["-O", &managers, "-O", "topics=[\"web\"]"]);
    wait_registered(m2, node);
    a
}

/// A client of both managers, m1 first.
fn client_of_both(m1: &Proc, m2: &Proc) -> Client {
    let endpoints = format!(
        "{},{}",
        m1.ep("frontend_endpoint"),
        m2.ep("frontend_endpoint")
    );
    Client::at(&endpoints)
        .key(&m1.pki.as_ref().unwrap().client_key())
        .env(
            "SERVICE_MGR_MANAGER_KEY",
            m1.ready["manager_key"].as_str().unwrap(),
        )
}

/// A signed request, as the client sends it (results on its connection).
fn signed(key: &KeyPair, cmd: &str, service: &str, topic: &str) -> Vec<u8> {
    let mut req = ServiceRequest::new(cmd, service, topic);
    let mut body = RequestBody::for_request(
        &req,
        uuid::Uuid::new_v4().simple().to_string(),
        service_mgr::clock::now_ms(),
        key.public().to_string(),
    );
    body.accept_by = Some(body.ts + 10_000);
    req.auth = Some(security::sign(key, Purpose::Request, &body));
    p::encode(&req)
}

/// The results of job `uuid` through `mgr` (`client --job`).
fn job_results(mgr: &Proc, uuid: &str) -> Vec<Value> {
    let (out, doc) = Client::new(mgr).arg("--job").arg(uuid).run();
    assert_eq!(out.status.code(), Some(0), "{doc}");
    doc["results"].as_array().unwrap().clone()
}

/// Run `client` (JSON output) until the fake service ran `what` `n` times,
/// SIGKILL `m1`, and return the client's exit code, report and stderr.
fn kill_mid_job(
    m1: &mut Proc,
    client: Client,
    dir: &Path,
    what: &str,
    n: usize,
) -> (Option<i32>, Value, String) {
    let running = client.format("json").spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while calls_of(dir, what) < n {
        if Instant::now() > deadline {
            let out = running.output();
            panic!(
                "the nodes never ran {what:?} ({:?}); the client exited {}: {}{}",
                calls(dir),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    m1.signal_and_wait(libc::SIGKILL, 10);
    let out = running.output();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), doc, stderr)
}

/// Calls of the fake service that name `what` (e.g. "brief-x restart").
fn calls_of(dir: &Path, what: &str) -> usize {
    calls(dir).iter().filter(|c| c.as_str() == what).count()
}

/// The same signed request through two managers (a client that retried it
/// through the second after the first's accept was lost): both accept it,
/// each job gets the node's answer, and the service ran once.
#[test]
fn a_request_retried_through_a_second_manager_runs_once() {
    with_timeout(90, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let m1 = manager(&[]);
        let m2 = second(&m1);
        let _a = agent_of_both(&m1, &m2, "n1", &fake);
        let key = KeyPair::load(Path::new(&m1.pki.as_ref().unwrap().client_key())).unwrap();
        let frame = signed(&key, "restart", "brief-x", "n1");
        let first = json(&req_raw(&m1.ep("frontend_endpoint"), &frame));
        let uuid1 = first["uuid"]
            .as_str()
            .unwrap_or_else(|| panic!("{first}"))
            .to_owned();
        // While it runs (0.3 s), and again once it ran.
        let again = json(&req_raw(&m2.ep("frontend_endpoint"), &frame));
        let uuid2 = again["uuid"]
            .as_str()
            .unwrap_or_else(|| panic!("{again}"))
            .to_owned();
        assert_ne!(uuid1, uuid2, "two managers, two jobs");
        assert_eq!(again["expected"], serde_json::json!(["n1"]), "{again}");
        for (mgr, uuid) in [(&m1, &uuid1), (&m2, &uuid2)] {
            let results = wait_for(10, "the node's answer in each job", || {
                let r = job_results(mgr, uuid);
                (!r.is_empty()).then_some(r)
            });
            assert_eq!(results.len(), 1, "{results:?}");
            assert_eq!(results[0]["node"], "n1", "{results:?}");
            assert_eq!(results[0]["status"], "ok", "{results:?}");
            assert_eq!(results[0]["uuid"], uuid.as_str(), "{results:?}");
            assert_eq!(
                results[0]["result"]["stdout"], "brief-x restart ok\n",
                "{results:?}"
            );
        }
        // A third time, through the second manager again: its first answer.
        std::thread::sleep(Duration::from_millis(500));
        let third = json(&req_raw(&m2.ep("frontend_endpoint"), &frame));
        assert_eq!(
            third["uuid"],
            uuid2.as_str(),
            "the second manager's own retry: its first answer"
        );
        assert_eq!(
            calls_of(dir.path(), "brief-x restart"),
            1,
            "{:?}",
            calls(dir.path())
        );
    });
}

/// The manager that dispatched a rollout's first batch is killed while the
/// nodes work: the client (`-e m1,m2 --batch 1`) goes on through the second
/// manager, every node's result is reported, nothing runs twice, and the
/// job can be read from the manager that took it over.
#[test]
fn a_rollout_goes_on_through_another_manager_when_its_manager_is_killed() {
    with_timeout(120, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut m1 = manager(&[]);
        let m2 = second(&m1);
        let _a1 = agent_of_both(&m1, &m2, "n1", &fake);
        let _a2 = agent_of_both(&m1, &m2, "n2", &fake);
        let client = client_of_both(&m1, &m2)
            .topic("web")
            .arg("--batch")
            .arg("1")
            .cmd("restart")
            .service("snooze-web");
        let started = Instant::now();
        let (code, doc, stderr) =
            kill_mid_job(&mut m1, client, dir.path(), "snooze-web restart", 1);
        let took = started.elapsed();
        assert_eq!(code, Some(0), "{doc}\n{stderr}");
        let results = doc["results"].as_array().unwrap();
        let mut nodes: Vec<(&str, &str)> = results
            .iter()
            .map(|r| (r["node"].as_str().unwrap(), r["status"].as_str().unwrap()))
            .collect();
        nodes.sort();
        assert_eq!(nodes, [("n1", "ok"), ("n2", "ok")], "{doc}\n{stderr}");
        assert!(stderr.contains("continued through"), "{stderr}");
        assert_eq!(
            calls_of(dir.path(), "snooze-web restart"),
            2,
            "{:?}",
            calls(dir.path())
        );
        eprintln!(
            "rollout finished {:.1} s after it started (the kill in its first batch)",
            took.as_secs_f64()
        );
        // Both batches' jobs, through any manager that answers (m1 is gone).
        for job in doc["jobs"].as_array().unwrap() {
            let (out, rec) = client_of_both(&m1, &m2)
                .arg("--job")
                .arg(job.as_str().unwrap())
                .format("json")
                .run();
            assert_eq!(out.status.code(), Some(0), "{rec}");
            assert_eq!(rec["results"].as_array().unwrap().len(), 1, "{rec}");
        }
        // A new request with the first manager down, the managers listed in
        // a client.conf as a user would: the second answers.
        let conf = dir.path().join("client.conf");
        let endpoints = format!(
            "{},{}",
            m1.ep("frontend_endpoint"),
            m2.ep("frontend_endpoint")
        );
        std::fs::write(
            &conf,
            format!(
                "endpoint = {}\nkey = {}\nmanager_key = {}\nformat = \"json\"\n",
                toml_str(&endpoints),
                toml_str(&m1.pki.as_ref().unwrap().client_key()),
                toml_str(m1.ready["manager_key"].as_str().unwrap()),
            ),
        )
        .unwrap();
        let out = std::process::Command::new(bin())
            .args(["client", "--conf"])
            .arg(&conf)
            .args(["-T", "web", "-c", "status", "-s", "sshd"])
            .env_remove("SERVICE_MGR_KEY")
            .env_remove("SERVICE_MGR_MANAGER_KEY")
            .output()
            .unwrap();
        let doc: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(out.status.code(), Some(0), "{doc}");
        assert_eq!(doc["results"].as_array().unwrap().len(), 2, "{doc}");
    });
}

/// A node only the killed manager reached: once another manager takes the
/// job over it is reported `no_response` at once (exit 4), saying why,
/// instead of after the whole wait; the node both reach answers.
#[test]
fn a_node_the_new_manager_does_not_reach_is_reported_at_once() {
    with_timeout(120, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut m1 = manager(&[]);
        let m2 = second(&m1);
        let _a1 = agent_of_both(&m1, &m2, "n1", &fake);
        let _a3 = agent(&m1, "n3", &fake, &["-O", "topics=[\"web\"]"]);
        let client = client_of_both(&m1, &m2)
            .topic("web")
            .cmd("restart")
            .service("snooze-one");
        let (code, doc, stderr) =
            kill_mid_job(&mut m1, client, dir.path(), "snooze-one restart", 2);
        assert_eq!(code, Some(4), "{doc}\n{stderr}");
        let by_node = |n: &str| {
            doc["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["node"] == n)
                .cloned()
                .unwrap_or_else(|| panic!("no line for {n}: {doc}"))
        };
        assert_eq!(by_node("n1")["status"], "ok", "{doc}");
        assert_eq!(by_node("n3")["status"], "no_response", "{doc}");
        let why = by_node("n3")["msg"].as_str().unwrap().to_owned();
        assert!(why.contains("does not reach this node"), "{why}");
        assert!(doc["elapsed_ms"].as_u64().unwrap() < 30_000, "{doc}");
    });
}

/// Three managers sharing a PostgreSQL job store, two agents on every one:
/// a rollout whose manager is killed goes on through another, and the third,
/// which neither dispatched nor took the job over, reads it from the database.
#[test]
fn three_managers_on_postgres_survive_a_kill_and_any_reads_the_job() {
    let Some(server) =
        pg::server("managers::three_managers_on_postgres_survive_a_kill_and_any_reads_the_job")
    else {
        return;
    };
    with_timeout(180, move || {
        let db = pg::Db::new(&server);
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut m1 = manager(&["-O", &pg::job_store(&db.url)]);
        let pki = m1.pki.as_ref().unwrap();
        let m2 = pg::manager_on(pki, &db.url, None);
        let m3 = pg::manager_on(pki, &db.url, None);
        let list = |key: &str| {
            let eps: Vec<String> = [&m1, &m2, &m3].iter().map(|m| m.ep(key)).collect();
            eps.join(",")
        };
        let managers = format!("manager_endpoint={}", toml_str(&list("backend_endpoint")));
        let agents: Vec<Proc> = ["n1", "n2"]
            .iter()
            .map(|n| {
                let a = agent(&m1, n, &fake, &["-O", &managers, "-O", "topics=[\"web\"]"]);
                wait_registered(&m2, n);
                wait_registered(&m3, n);
                a
            })
            .collect();
        let key = m1.ready["manager_key"].as_str().unwrap().to_owned();
        let client = || {
            Client::at(&list("frontend_endpoint"))
                .key(&pki.client_key())
                .env("SERVICE_MGR_MANAGER_KEY", &key)
        };
        let rollout = client()
            .topic("web")
            .arg("--batch")
            .arg("1")
            .cmd("restart")
            .service("snooze-db");
        let (code, doc, stderr) =
            kill_mid_job(&mut m1, rollout, dir.path(), "snooze-db restart", 1);
        assert_eq!(code, Some(0), "{doc}\n{stderr}");
        assert_eq!(doc["summary"]["ok"], 2, "{doc}\n{stderr}");
        assert_eq!(calls_of(dir.path(), "snooze-db restart"), 2);
        let first_job = doc["jobs"][0].as_str().unwrap().to_owned();
        // The third manager never saw the job: it reads it from the database.
        let results = wait_for(10, "the first batch's result in the database", || {
            let r = job_results(&m3, &first_job);
            (r.len() == 1).then_some(r)
        });
        assert_eq!(results[0]["status"], "ok", "{results:?}");
        assert!(
            !m3.log_text().contains(&first_job),
            "m3 neither dispatched nor took it over"
        );
        drop(agents);
    });
}
