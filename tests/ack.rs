//! Results acknowledged end to end (issue 13, point 1): an agent keeps each
//! result until the manager says its job store holds it, so a manager that
//! stops (or dies) under load loses none of the results its agents sent.

use crate::util::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const NODES: [&str; 3] = ["a1", "a2", "a3"];

/// Stop `mgr` with `sig` and start it again at once on the same ports and
/// state, as a supervisor would (`Restart=always`).
fn restart_after(mgr: &mut Proc, sig: i32) -> Proc {
    let endpoints = MANAGER_ENDPOINTS.map(|k| format!("{k}={}", mgr.ep(k)));
    mgr.signal_and_wait(sig, 15);
    let state = format!(
        "state_dir={}",
        toml_str(&mgr.pki.as_ref().unwrap().path("state"))
    );
    let mut args = vec![
        "daemon",
        "-D",
        "-f",
        "/dev/null",
        "-O",
        state.as_str(),
        "-O",
        r#"mgmt_admin_keys=["tester"]"#,
    ];
    for e in &endpoints {
        args.extend(["-O", e.as_str()]);
    }
    let mut again = spawn_ready(&args);
    again.pki = mgr.pki.take();
    register_manager(&again, again.pki.as_ref().unwrap());
    again
}

/// Each job's stored status per node, as `manager.job` shows it.
fn stored(mgr: &Proc, job: &str) -> BTreeMap<String, String> {
    let r = mgmt_req(
        &mgr.ep("mgmt_endpoint"),
        json!({"cmd": "manager.job", "uuid": job}),
    );
    r["result"]["results"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    (
                        r["node"].as_str().unwrap_or("?").to_owned(),
                        r["status"].as_str().unwrap_or("?").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Wait up to `secs` until every job has an `ok` of every node in the store;
/// returns what is still missing (job, node) when the time is up.
fn missing_after(mgr: &Proc, jobs: &[String], secs: u64) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut missing = Vec::new();
        for job in jobs {
            let have = stored(mgr, job);
            for n in NODES {
                if have.get(n).map(String::as_str) != Some("ok") {
                    missing.push((job.clone(), n.to_owned()));
                }
            }
        }
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The job ids of every job the store lists.
fn listed_jobs(mgr: &Proc) -> Vec<String> {
    let r = mgmt_req(
        &mgr.ep("mgmt_endpoint"),
        json!({"cmd": "manager.jobs", "limit": 1000}),
    );
    r["result"]
        .as_array()
        .unwrap_or_else(|| panic!("no job list: {r}"))
        .iter()
        .filter_map(|j| j["uuid"].as_str().map(str::to_owned))
        .collect()
}

// Issue 13.1: results the agents had sent were lost when the manager died before its job store synced them.
#[test]
fn results_sent_before_the_manager_is_killed_are_stored_after_its_restart() {
    with_timeout(120, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager(&[]);
        let _agents: Vec<Proc> = NODES.iter().map(|n| agent(&mgr, n, &fake, &[])).collect();
        // Answered at once: the last results are published, and at most in the
        // store's lazy (not yet synced) commits when the manager dies.
        let mut jobs = Vec::new();
        for i in 0..8 {
            let (out, doc) = Client::new(&mgr)
                .topic("any")
                .service(&format!("svc{i}"))
                .cmd("status")
                .run();
            assert_eq!(out.status.code(), Some(0), "{doc}");
            jobs.push(doc["job"].as_str().unwrap().to_owned());
        }
        let mut mgr2 = restart_after(&mut mgr, libc::SIGKILL);
        for n in NODES {
            wait_registered(&mgr2, n);
        }
        let missing = missing_after(&mgr2, &jobs, 30);
        assert!(
            missing.is_empty(),
            "results lost: {missing:?}\n{}",
            mgr2.log_text()
        );
        // Each result is stored once, whatever was sent again.
        for job in &jobs {
            let r = mgmt_req(
                &mgr2.ep("mgmt_endpoint"),
                json!({"cmd": "manager.job", "uuid": job}),
            );
            assert_eq!(r["result"]["results_total"], 3, "{r}");
            assert_eq!(r["result"]["conflicts"], 0, "{r}");
        }
        mgr2.signal_and_wait(libc::SIGTERM, 10);
    });
}

// Issue 13.1: requests from several clients, SIGTERM to the manager under load and an immediate restart lost results.
#[test]
fn no_result_is_lost_when_the_manager_stops_under_load() {
    with_timeout(180, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager(&[]);
        let _agents: Vec<Proc> = NODES.iter().map(|n| agent(&mgr, n, &fake, &[])).collect();
        // Clients that keep asking (commands of 0.3 s) until the manager goes away.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients: Vec<_> = (0..10)
            .map(|c| {
                let endpoint = mgr.ep("frontend_endpoint");
                let key = mgr.pki.as_ref().unwrap().client_key();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 40 {
                        let _ = Client::at(&endpoint)
                            .key(&key)
                            .topic("any")
                            .service(&format!("brief-{c}-{i}"))
                            .cmd("status")
                            .wait("1")
                            .output();
                        i += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        let mut mgr2 = restart_after(&mut mgr, libc::SIGTERM);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        for n in NODES {
            wait_registered(&mgr2, n);
        }
        // Every job the manager accepted before the stop is in the store (it is
        // synced as the manager stops). Each node that ran its command (the
        // fake service's call log) must have its result stored. (A request
        // accepted in the last moment whose dispatch never left is not run:
        // that is not a lost result.)
        let jobs = listed_jobs(&mgr2);
        assert!(jobs.len() >= 4, "too few jobs to tell: {jobs:?}");
        let ran = calls(dir.path());
        let deadline = Instant::now() + Duration::from_secs(40);
        let (mut missing, mut total) = (Vec::new(), 0);
        for job in &jobs {
            let r = mgmt_req(
                &mgr2.ep("mgmt_endpoint"),
                json!({"cmd": "manager.job", "uuid": job}),
            );
            let service = r["result"]["request"]["service"].as_str().unwrap_or("?");
            let runs = ran
                .iter()
                .filter(|l| l.as_str() == format!("{service} status"))
                .count();
            total += runs;
            loop {
                let oks = stored(&mgr2, job).values().filter(|s| *s == "ok").count();
                if oks >= runs {
                    break;
                }
                if Instant::now() >= deadline {
                    missing.push((job.clone(), runs - oks));
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        assert!(total >= 12, "too few commands ran to tell: {total}");
        let lost: usize = missing.iter().map(|(_, n)| n).sum();
        assert!(
            missing.is_empty(),
            "{lost} of {total} results of commands that ran are not stored: {missing:?}"
        );
        mgr2.signal_and_wait(libc::SIGTERM, 10);
    });
}

// The outbox survives the agent's restart: a result sent while the manager was away is delivered by the next run.
#[test]
fn an_agent_restarted_before_the_ack_delivers_its_results() {
    with_timeout(120, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager(&[]);
        let mut a1 = agent(&mgr, "a1", &fake, &[]);
        // The command outlives the manager; the agent answers into the void and stops.
        let (out, doc) = Client::new(&mgr)
            .topic("a1")
            .service("pause-svc")
            .cmd("status")
            .wait("0.2")
            .run();
        assert_eq!(out.status.code(), Some(4), "{doc}");
        let job = doc["job"].as_str().unwrap().to_owned();
        let endpoints = MANAGER_ENDPOINTS.map(|k| format!("{k}={}", mgr.ep(k)));
        mgr.signal_and_wait(libc::SIGKILL, 10);
        wait_for(10, "the command to finish", || {
            (calls(dir.path()).len() == 1).then_some(())
        });
        std::thread::sleep(Duration::from_millis(1800));
        // The agent says what it holds for the manager.
        let st = mgmt(&a1.ep("mgmt_endpoint"), "agent.status");
        assert_eq!(st["result"]["unacknowledged"], 1, "{st}");
        a1.signal_and_wait(libc::SIGTERM, 15);
        let outbox = mgr.pki.as_ref().unwrap().path("a1.key.outbox");
        // Manager and agent back: the result reaches the store.
        let state = format!(
            "state_dir={}",
            toml_str(&mgr.pki.as_ref().unwrap().path("state"))
        );
        let mut args = vec!["daemon", "-D", "-f", "/dev/null", "-O", state.as_str()];
        for e in &endpoints {
            args.extend(["-O", e.as_str()]);
        }
        let mut mgr2 = spawn_ready(&args);
        mgr2.pki = mgr.pki.take();
        register_manager(&mgr2, mgr2.pki.as_ref().unwrap());
        let a1 = agent(&mgr2, "a1", &fake, &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while stored(&mgr2, &job).get("a1").map(String::as_str) != Some("ok") {
            assert!(
                Instant::now() < deadline,
                "result not delivered after the agent's restart"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Acknowledged: the journal (kept beside the agent's key) empties.
        wait_for(10, "the outbox to empty", || {
            std::fs::read_to_string(&outbox)
                .unwrap_or_default()
                .is_empty()
                .then_some(())
        });
        let st = mgmt(&a1.ep("mgmt_endpoint"), "agent.status");
        assert_eq!(st["result"]["unacknowledged"], 0, "{st}");
        assert_eq!(st["result"]["unacknowledged_dropped"], 0, "{st}");
        let v: Value = mgmt_req(
            &mgr2.ep("mgmt_endpoint"),
            json!({"cmd": "manager.job", "uuid": job}),
        );
        assert_eq!(v["result"]["results_total"], 1, "{v}");
    });
}

// Issue 13.1: results that reached a manager as it stopped (here: stalled, then SIGTERM) were neither stored nor sent again.
#[test]
fn results_that_reach_a_stopping_manager_are_stored_after_its_restart() {
    with_timeout(120, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager(&[]);
        let _agents: Vec<Proc> = NODES.iter().map(|n| agent(&mgr, n, &fake, &[])).collect();
        let mut jobs = Vec::new();
        for i in 0..6 {
            let (_, doc) = Client::new(&mgr)
                .topic("any")
                .service(&format!("pause-{i}"))
                .cmd("status")
                .wait("0.1")
                .run();
            jobs.push(doc["job"].as_str().unwrap().to_owned());
        }
        // The manager stalls while the commands finish: their results wait in
        // its socket buffers, and it is told to stop as it resumes.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(mgr.pid(), libc::SIGSTOP) };
        wait_for(10, "the commands to start", || {
            (calls(dir.path()).len() == jobs.len() * NODES.len()).then_some(())
        });
        std::thread::sleep(Duration::from_millis(2500));
        // SAFETY: as above.
        unsafe {
            libc::kill(mgr.pid(), libc::SIGTERM);
            libc::kill(mgr.pid(), libc::SIGCONT);
        }
        let mut mgr2 = restart_after(&mut mgr, libc::SIGTERM);
        for n in NODES {
            wait_registered(&mgr2, n);
        }
        let missing = missing_after(&mgr2, &jobs, 30);
        assert!(
            missing.is_empty(),
            "{} of {} results lost: {missing:?}",
            missing.len(),
            jobs.len() * NODES.len()
        );
        mgr2.signal_and_wait(libc::SIGTERM, 10);
    });
}
