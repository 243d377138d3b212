//! The PostgreSQL job store (`job_store = "postgres://..."`, issue 14 point 3)
//! against a real server: what lands there, a second manager reading it, the
//! database going away under load, a restart. Each test skips loudly without
//! `SERVICE_MGR_TEST_PG` and fails without it under CI (see tests/util/pg.rs).

use crate::util::pg::{self, job_store, Db, Proxy};
use crate::util::{
    agent, fake_service, manager, mgmt, mgmt_req, wait_for, with_timeout, Client, Proc,
    MANAGER_ENDPOINTS,
};
use serde_json::{json, Value};
use service_mgr::jobstore::{JobStore, PgStore, StoreEvent};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Another manager on `mgr`'s state_dir (so its keys: one deployment, as
/// several managers share them) and the job store `url`, on new loopback
/// ports, or on `endpoints` (a restart).
fn twin(mgr: &Proc, url: &str, endpoints: Option<&[String]>) -> Proc {
    pg::manager_on(mgr.pki.as_ref().unwrap(), url, endpoints)
}

/// A manager (with `extra` settings) and agents web1 and web2 of the topic
/// `web`, with the directory of their fake service.
fn web_fleet(extra: &[&str]) -> (Proc, (tempfile::TempDir, [Proc; 2])) {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_service(dir.path());
    let mgr = manager(extra);
    let web = ["-O", "topics=[\"web\"]"];
    let agents = [
        agent(&mgr, "web1", &fake, &web),
        agent(&mgr, "web2", &fake, &web),
    ];
    (mgr, (dir, agents))
}

fn status(mgr: &Proc) -> Value {
    mgmt(&mgr.ep("mgmt_endpoint"), "manager.status")
}

/// (node, status) of a job's results in the history view.
fn history(db: &Db, job: &str) -> Vec<(String, String, String, String, String)> {
    db.client()
        .query(
            "SELECT node, status, client_name, cmd, service FROM service_mgr.history WHERE job = $1 ORDER BY node",
            &[&job],
        )
        .map(|rows| {
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect()
        })
        .unwrap_or_default()
}

fn run_job(mgr: &Proc, topic: &str, cmd: &str) -> String {
    let (out, doc) = Client::new(mgr).topic(topic).cmd(cmd).service("sshd").run();
    assert_eq!(out.status.code(), Some(0), "{doc}");
    doc["job"].as_str().unwrap().to_owned()
}

/// The store's merge rules (the redb store's unit test, replayed on
/// PostgreSQL): first result kept, duplicates ignored, differing ones
/// counted, a placeholder replaced by a late answer, stubs for unknown jobs,
/// expiry with results.
#[test]
fn merge_rules_hold_on_postgres() {
    let Some(server) = pg::server("pgstore::merge_rules_hold_on_postgres") else {
        return;
    };
    with_timeout(60, move || {
        let db = Db::new(&server);
        let store = PgStore::open(&db.url, &slog::Logger::root(slog::Discard, slog::o!())).unwrap();
        let u = "f569796669df4bf6982dd14c704900a0";
        let raw = |v: Value| serde_json::value::to_raw_value(&v).unwrap();
        let result = |node: &str, status: &str, rc: i64| StoreEvent::Result {
            uuid: u.into(),
            node: node.into(),
            status: status.into(),
            received_ms: 2000,
            result: raw(json!({"node": node, "returncode": rc})),
        };
        let no_response = |node: &str| StoreEvent::NoResponse {
            uuid: u.into(),
            node: node.into(),
            at_ms: 3000,
        };
        store
            .apply(&[StoreEvent::NewJob {
                uuid: u.into(),
                created_ms: 1000,
                request: json!({"cmd": "status", "service": "sshd", "topic": "any"}),
                expected: vec!["a".into(), "b".into(), "c".into()],
                client: Some("smgr1 client alice 0123".into()),
            }])
            .unwrap();
        store.flush().unwrap();
        store
            .apply(&[
                result("b", "failed", 1),
                result("a", "ok", 0),
                result("a", "ok", 0),
                result("a", "failed", 3),
                no_response("a"),
                no_response("c"),
                StoreEvent::Finished {
                    uuid: u.into(),
                    at_ms: 3000,
                },
            ])
            .unwrap();
        store.flush().unwrap();
        // In later batches: a late answer replaces the placeholder, a late
        // Finished changes nothing, a differing repeat is counted.
        store.apply(&[result("c", "ok", 0)]).unwrap();
        store
            .apply(&[
                StoreEvent::Finished {
                    uuid: u.into(),
                    at_ms: 9000,
                },
                result("b", "ok", 0),
                result("late", "ok", 0),
            ])
            .unwrap();
        store.flush().unwrap();
        let job = store.get(u).unwrap().unwrap();
        assert_eq!(job.created_ms, 1000);
        assert_eq!(job.request["service"], "sshd");
        assert_eq!(job.expected, ["a", "b", "c"]);
        assert_eq!(job.client.as_deref(), Some("smgr1 client alice 0123"));
        assert_eq!(job.finished_ms, Some(3000));
        assert_eq!(job.conflicts, 2);
        let got: Vec<_> = job.results.iter().map(|r| (&*r.node, &*r.status)).collect();
        assert_eq!(
            got,
            [("a", "ok"), ("b", "failed"), ("c", "ok"), ("late", "ok")]
        );
        assert_eq!(job.results[0].result["returncode"], 0);
        // Pages, and a summary that counts by status.
        let (page, next) = store.get_page(u, 1, 2, usize::MAX).unwrap().unwrap();
        assert_eq!(
            (page.results.len(), page.results_total, next),
            (2, 4, Some(3))
        );
        assert_eq!(page.results[0].node, "b");
        let s = &store.list(10).unwrap()[0];
        assert_eq!((s.expected_count, s.answered_count), (3, 4));
        assert_eq!(s.status_counts["ok"], 3);
        // A result for a job nobody announced makes a stub a NewJob completes.
        store
            .apply(&[StoreEvent::Result {
                uuid: "stub".into(),
                node: "a".into(),
                status: "ok".into(),
                received_ms: 5000,
                result: raw(json!({})),
            }])
            .unwrap();
        store.flush().unwrap();
        let stub = store.get("stub").unwrap().unwrap();
        assert_eq!((stub.request.clone(), stub.created_ms), (Value::Null, 5000));
        assert_eq!(store.list(10).unwrap()[0].uuid, "stub");
        assert!(store.get("0123").unwrap().is_none());
        // Expiry runs on the writer and takes the results along.
        store.expire(2000).unwrap();
        wait_for(10, "expiry", || {
            store.get(u).unwrap().is_none().then_some(())
        });
        let left: i64 = db
            .client()
            .query_one("SELECT count(*) FROM service_mgr.results", &[])
            .unwrap()
            .get(0);
        assert_eq!(left, 1);
    });
}

/// Every request (who signed it, what, where) and every result lands in
/// PostgreSQL, readable through the documented view.
#[test]
fn results_of_jobs_land_in_postgres() {
    let Some(server) = pg::server("pgstore::results_of_jobs_land_in_postgres") else {
        return;
    };
    with_timeout(120, move || {
        let db = Db::new(&server);
        let (mgr, _fleet) = web_fleet(&["-O", &job_store(&db.url)]);
        let job = run_job(&mgr, "web", "restart");
        let rows = wait_for(10, "the job's results in PostgreSQL", || {
            let rows = history(&db, &job);
            (rows.len() == 2).then_some(rows)
        });
        for (i, row) in rows.iter().enumerate() {
            let node = format!("web{}", i + 1);
            let want = (
                node,
                "ok".into(),
                "tester".into(),
                "restart".into(),
                "sshd".into(),
            );
            assert_eq!(row, &want);
        }
        let summary = db
            .client()
            .query_one(
                "SELECT expected, ok, no_response FROM service_mgr.job_summary WHERE job = $1",
                &[&job],
            )
            .unwrap();
        let counts: (i32, i64, i64) = (summary.get(0), summary.get(1), summary.get(2));
        assert_eq!(counts, (2, 2, 0));
        // And the manager reads it back.
        let r = mgmt_req(
            &mgr.ep("mgmt_endpoint"),
            json!({"cmd": "manager.job", "uuid": job}),
        );
        assert_eq!(r["result"]["results"].as_array().unwrap().len(), 2, "{r}");
        assert!(
            r["result"]["client"].as_str().unwrap().contains("tester"),
            "{r}"
        );
        assert_eq!(status(&mgr)["result"]["job_store_warning"], Value::Null);
    });
}

/// `client --job ID` through a manager that did not dispatch the job: it
/// reads the job from the shared database.
#[test]
fn client_job_works_through_a_manager_that_did_not_dispatch_it() {
    let Some(server) =
        pg::server("pgstore::client_job_works_through_a_manager_that_did_not_dispatch_it")
    else {
        return;
    };
    with_timeout(120, move || {
        let db = Db::new(&server);
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut first = manager(&["-O", &job_store(&db.url)]);
        let _a = agent(&first, "n1", &fake, &[]);
        let mut second = twin(&first, &db.url, None);
        // The node reaches both managers (its one key), as agents of several managers will.
        second.pki = first.pki.take();
        let _a2 = agent(&second, "n1", &fake, &[]);
        let job = run_job(&first, "n1", "status");
        wait_for(10, "the result in PostgreSQL", || {
            (history(&db, &job).len() == 1).then_some(())
        });
        let (out, doc) = Client::new(&second).arg("--job").arg(&job).run();
        assert_eq!(out.status.code(), Some(0), "{doc}");
        assert_eq!(doc["job"], job.as_str(), "{doc}");
        let results = doc["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{doc}");
        assert_eq!(results[0]["node"], "n1", "{doc}");
        assert_eq!(results[0]["status"], "ok", "{doc}");
        // The second manager never saw it: it came from the database.
        assert!(!second.log_text().contains(&format!("\"uuid\":\"{job}\"")));
        drop(first);
    });
}

/// The database taken away and brought back while requests flow: every
/// request is still answered, `manager.status` answers within a second
/// throughout and says what waits to be written, the log says it once, and
/// once the database is back every job and result is in it. `url` is what the
/// manager uses, `check` where the test looks (the same database).
fn outage_under_load(url: &str, check: &str, down: &dyn Fn(), up: &dyn Fn()) {
    let dir = tempfile::tempdir().unwrap();
    let fake = fake_service(dir.path());
    let mgr = Arc::new(manager(&["-O", &job_store(url)]));
    let _a = agent(&mgr, "n1", &fake, &["-O", "topics=[\"all\"]"]);
    let _b = agent(&mgr, "n2", &fake, &["-O", "topics=[\"all\"]"]);
    const JOBS: usize = 24;
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let load = {
        let (mgr, done, finished) = (mgr.clone(), done.clone(), finished.clone());
        std::thread::spawn(move || {
            let mut jobs = Vec::new();
            for _ in 0..JOBS {
                jobs.push(run_job(&mgr, "all", "status"));
                done.fetch_add(1, Ordering::SeqCst);
            }
            finished.store(true, Ordering::SeqCst);
            jobs
        })
    };
    // Status answers fast whatever the database does.
    let timed_status = || {
        let t = Instant::now();
        let s = status(&mgr);
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "manager.status took {took:?}"
        );
        s["result"]["job_store_warning"].as_str().map(str::to_owned)
    };
    wait_for(60, "the first jobs", || {
        (done.load(Ordering::SeqCst) >= 4).then_some(())
    });
    let down_at = done.load(Ordering::SeqCst);
    down();
    let mut warned = None;
    while done.load(Ordering::SeqCst) < down_at + 8 || warned.is_none() {
        assert!(
            !finished.load(Ordering::SeqCst) || warned.is_some(),
            "load ended before the manager noticed"
        );
        if let Some(w) = timed_status() {
            warned = Some(w);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let warning = warned.unwrap();
    eprintln!("while down: {warning}");
    assert!(warning.contains("cannot be written"), "{warning}");
    assert!(warning.contains("queued in memory"), "{warning}");
    up();
    while !finished.load(Ordering::SeqCst) {
        timed_status();
        std::thread::sleep(Duration::from_millis(200));
    }
    let jobs = load.join().unwrap();
    // Caught up: every job and every result, and the warning gone.
    let connect = || postgres::Client::connect(check, postgres::NoTls).unwrap();
    wait_for(30, "the queued events in PostgreSQL", || {
        let n: i64 = connect()
            .query_one(
                "SELECT count(*) FROM service_mgr.results WHERE uuid = ANY($1) AND status = 'ok'",
                &[&jobs],
            )
            .unwrap()
            .get(0);
        (n == 2 * JOBS as i64).then_some(())
    });
    let requests: i64 = connect()
        .query_one(
            "SELECT count(*) FROM service_mgr.jobs WHERE uuid = ANY($1) AND request->>'cmd' = 'status'",
            &[&jobs],
        )
        .unwrap()
        .get(0);
    assert_eq!(requests, JOBS as i64);
    wait_for(10, "the warning to clear", || {
        timed_status().is_none().then_some(())
    });
    let log = mgr.log_text();
    assert_eq!(
        crate::util::count_lines(&log, "PostgreSQL job store cannot be written"),
        1,
        "said once: {log}"
    );
    assert!(log.contains("PostgreSQL job store writes again"), "{log}");
}

/// The outage as a lost network: every connection cut, new ones refused.
#[test]
fn database_down_under_load_loses_nothing_and_never_blocks_the_manager() {
    let Some(server) =
        pg::server("pgstore::database_down_under_load_loses_nothing_and_never_blocks_the_manager")
    else {
        return;
    };
    with_timeout(240, move || {
        let db = Db::new(&server);
        let proxy = Proxy::new(&db.url);
        outage_under_load(&proxy.url(&db.url), &db.url, &|| proxy.down(), &|| {
            proxy.up()
        });
    });
}

/// The outage as the database server stopped (`pg_ctl stop -m fast`) and
/// started again, on a cluster of the test's own.
#[test]
fn database_stopped_and_started_under_load_loses_nothing() {
    let Some(cluster) =
        pg::Cluster::new("pgstore::database_stopped_and_started_under_load_loses_nothing")
    else {
        return;
    };
    with_timeout(240, move || {
        let url = cluster.url();
        outage_under_load(&url, &url, &|| cluster.stop(), &|| cluster.start());
    });
}

/// A manager stopped right after a job and started again on the same
/// database keeps the job (what it had queued was written before it exited).
#[test]
fn a_restarted_manager_keeps_its_jobs_in_postgres() {
    let Some(server) = pg::server("pgstore::a_restarted_manager_keeps_its_jobs_in_postgres") else {
        return;
    };
    with_timeout(120, move || {
        let db = Db::new(&server);
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager(&["-O", &job_store(&db.url)]);
        let agent_proc = agent(&mgr, "n1", &fake, &[]);
        let job = run_job(&mgr, "n1", "status");
        let endpoints = MANAGER_ENDPOINTS.map(|k| format!("{k}={}", mgr.ep(k)));
        assert_eq!(mgr.signal_and_wait(libc::SIGTERM, 10).code(), Some(0));
        let count: i64 = db
            .client()
            .query_one(
                "SELECT count(*) FROM service_mgr.results WHERE uuid = $1",
                &[&job],
            )
            .unwrap()
            .get(0);
        assert_eq!(count, 1, "written before the manager exited");
        let again = twin(&mgr, &db.url, Some(&endpoints));
        let r = mgmt_req(
            &again.ep("mgmt_endpoint"),
            json!({"cmd": "manager.job", "uuid": job}),
        );
        assert_eq!(r["result"]["results"][0]["status"], "ok", "{r}");
        let jobs = mgmt_req(&again.ep("mgmt_endpoint"), json!({"cmd": "manager.jobs"}));
        assert_eq!(jobs["result"][0]["uuid"], job.as_str(), "{jobs}");
        drop(agent_proc);
    });
}

/// A database that hangs (connections accepted, never answered) costs a
/// read at most a second: `mgmt job` gets an error saying so and the manager
/// answers the next request at once. Before the reads moved to their own
/// threads each one held the manager's loop for the whole connect timeout.
#[test]
fn a_hung_database_holds_a_read_for_a_second_at_most() {
    let Some(server) = pg::server("pgstore::a_hung_database_holds_a_read_for_a_second_at_most")
    else {
        return;
    };
    with_timeout(120, move || {
        let db = Db::new(&server);
        let proxy = Proxy::new(&db.url);
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&["-O", &job_store(&proxy.url(&db.url))]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let job = run_job(&mgr, "n1", "status");
        let read = || {
            mgmt_req(
                &mgr.ep("mgmt_endpoint"),
                json!({"cmd": "manager.job", "uuid": job}),
            )
        };
        wait_for(10, "the job in PostgreSQL", || {
            (read()["success"] == 0).then_some(())
        });
        proxy.stall();
        for _ in 0..3 {
            let t = Instant::now();
            let r = read();
            let took = t.elapsed();
            assert!(
                took < Duration::from_millis(1500),
                "a read took {took:?}: {r}"
            );
            assert_ne!(r["success"], 0, "{r}");
            assert!(
                r["msg"].as_str().unwrap_or_default().contains("job store"),
                "{r}"
            );
            let t = Instant::now();
            status(&mgr);
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "status after a read took {:?}",
                t.elapsed()
            );
        }
        proxy.up();
        wait_for(20, "reads to work again", || {
            (read()["result"]["results"][0]["status"] == "ok").then_some(())
        });
    });
}

/// `mgmt history` with its filters, as a table and as JSON, on `mgr` (whose
/// agents web1 and web2 have topic web).
fn check_history(mgr: &Proc) {
    let restart = run_job(mgr, "web", "restart");
    let status = run_job(mgr, "web1", "status");
    let ep = mgr.ep("mgmt_endpoint");
    let history = |args: &[&str]| -> Vec<(String, String, String, String)> {
        let mut all = vec!["mgmt", "-e", &ep, "history", "--format", "json"];
        all.extend_from_slice(args);
        // A result reaches the store a moment after the client had it.
        wait_for(10, "the history", || {
            let out = crate::util::run(&all);
            assert!(out.status.success(), "{args:?}: {out:?}");
            let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
            let rows: Vec<_> = doc["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                    (s("uuid"), s("cmd"), s("node"), s("status"))
                })
                .collect();
            (rows.iter().filter(|r| r.0 == restart).count() == 2 || args.len() > 1).then_some(rows)
        })
    };
    let all = history(&[]);
    let want =
        |job: &str, cmd: &str, node: &str| (job.to_owned(), cmd.into(), node.into(), "ok".into());
    // Newest request first, nodes in order.
    assert_eq!(
        all,
        [
            want(&status, "status", "web1"),
            want(&restart, "restart", "web1"),
            want(&restart, "restart", "web2")
        ]
    );
    assert_eq!(
        history(&["--node", "web2"]),
        [want(&restart, "restart", "web2")]
    );
    assert_eq!(
        history(&["--service", "sshd", "--client", "tester"]).len(),
        3
    );
    assert_eq!(history(&["--client", "nobody"]), []);
    assert_eq!(history(&["--since", "1h"]).len(), 3);
    assert_eq!(history(&["--since", "2099-01-01"]), []);
    assert_eq!(
        history(&["--limit", "1", "--offset", "1"]),
        [want(&restart, "restart", "web1")]
    );
    let out = crate::util::run(&[
        "mgmt", "-e", &ep, "history", "--node", "web1", "--format", "table",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("WHEN") || table.contains("WHEN "),
        "{table}"
    );
    assert!(
        table.contains("tester") && table.contains("restart") && table.contains("web1"),
        "{table}"
    );
    let bad = crate::util::run(&["mgmt", "-e", &ep, "history", "--since", "last tuesday"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

/// `mgmt history` (issue 14 point 5) on the embedded store.
#[test]
fn mgmt_history_on_the_embedded_store() {
    with_timeout(120, || {
        let (mgr, _fleet) = web_fleet(&[]);
        check_history(&mgr);
    });
}

/// `mgmt history` (issue 14 point 5) on PostgreSQL: the same answers.
#[test]
fn mgmt_history_on_postgres() {
    let Some(server) = pg::server("pgstore::mgmt_history_on_postgres") else {
        return;
    };
    with_timeout(120, move || {
        let db = Db::new(&server);
        let (mgr, _fleet) = web_fleet(&["-O", &job_store(&db.url)]);
        check_history(&mgr);
    });
}

/// Results are acknowledged to their agents only once PostgreSQL holds them:
/// with the database away, a manager killed with results queued in memory
/// loses none of them, as its agents send them again to its successor once
/// the database is back. (What only the dead manager knew, the requests
/// themselves, is gone: their results are kept under stub jobs.)
#[test]
fn results_queued_for_a_missing_database_survive_the_manager_being_killed() {
    let Some(server) = pg::server(
        "pgstore::results_queued_for_a_missing_database_survive_the_manager_being_killed",
    ) else {
        return;
    };
    with_timeout(180, move || {
        let db = Db::new(&server);
        let proxy = Proxy::new(&db.url);
        let url = proxy.url(&db.url);
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager(&["-O", &job_store(&url)]);
        let _a = agent(&mgr, "n1", &fake, &["-O", "topics=[\"all\"]"]);
        let _b = agent(&mgr, "n2", &fake, &["-O", "topics=[\"all\"]"]);
        proxy.down();
        let jobs: Vec<String> = (0..4).map(|_| run_job(&mgr, "all", "status")).collect();
        wait_for(10, "the manager to notice", || {
            status(&mgr)["result"]["job_store_warning"]
                .as_str()
                .map(|_| ())
        });
        let endpoints = MANAGER_ENDPOINTS.map(|k| format!("{k}={}", mgr.ep(k)));
        mgr.signal_and_wait(libc::SIGKILL, 10);
        proxy.up();
        let again = twin(&mgr, &url, Some(&endpoints));
        wait_for(60, "the agents' results sent again", || {
            let n: i64 = db
                .client()
                .query_one(
                    "SELECT count(*) FROM service_mgr.results WHERE uuid = ANY($1) AND status = 'ok'",
                    &[&jobs],
                )
                .unwrap()
                .get(0);
            (n == 2 * jobs.len() as i64).then_some(())
        });
        drop(again);
    });
}
