//! The agent at its edges: trust that changes while it runs, and how fast it
//! leaves.

use crate::util::*;
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};

/// `status` of `svc` on `node`, signed with the deployment's client key: the
/// first result.
fn status_of(mgr: &Proc, node: &str, svc: &str) -> Value {
    let (_, doc) = Client::new(mgr)
        .topic(node)
        .cmd("status")
        .service(svc)
        .wait("5")
        .run();
    doc["results"][0].clone()
}

/// Issue 15: a key added to authorized_clients was refused until the agent got a
/// SIGHUP; it reloads the file by itself now.
#[test]
fn key_appended_to_authorized_clients_is_trusted_without_a_signal() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        accept_agent_key(&mgr, "n1");
        let clients = dir.path().join("authorized_clients");
        std::fs::write(&clients, "# nobody yet\n").unwrap();
        let clients_opt = format!(
            "authorized_clients={}",
            toml_str(&clients.display().to_string())
        );
        let mut a = agent(&mgr, "n1", &fake, &["-O", &clients_opt]);
        let r = status_of(&mgr, "n1", "cron");
        assert_eq!(r["status"], "refused", "{r}");
        assert!(
            r["msg"].as_str().unwrap().contains("authorized clients"),
            "{r}"
        );
        assert!(calls(dir.path()).is_empty());

        // The operator appends the client's key line; no signal.
        let line =
            std::fs::read_to_string(mgr.pki.as_ref().unwrap().path("client.key.pub")).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&clients)
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
        drop(f);
        let ran = wait_for(5, "the agent to trust the appended key", || {
            let r = status_of(&mgr, "n1", "cron");
            (r["status"] != "refused").then_some(r)
        });
        assert_eq!(ran["status"], "ok", "{ran}");
        assert_eq!(calls(dir.path()), ["cron status"]);
        assert!(
            a.log_text().contains("authorized clients reloaded"),
            "{}",
            a.log_text()
        );

        // A file that turns invalid keeps the old list, with one clear error.
        std::fs::write(&clients, "this is not a key line\n").unwrap();
        wait_for(5, "the agent to notice the broken file", || {
            a.log_text()
                .contains("cannot reload authorized clients")
                .then_some(())
        });
        let r = status_of(&mgr, "n1", "cron");
        assert_eq!(r["status"], "ok", "{r}");
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            count_lines(&a.log_text(), "cannot reload authorized clients"),
            1,
            "{}",
            a.log_text()
        );
        let st = a.signal_and_wait(libc::SIGTERM, 10);
        assert_eq!(st.code(), Some(0));
    });
}

/// Issue 15: an idle agent took 2-7 s to exit on SIGTERM after logging "stopped".
#[test]
fn idle_agent_exits_promptly_on_sigterm() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        accept_agent_key(&mgr, "n1");
        let mut a = agent(&mgr, "n1", &fake, &[]);
        // A request first, so that every connection has carried traffic.
        assert_eq!(status_of(&mgr, "n1", "cron")["status"], "ok");
        let start = Instant::now();
        let st = a.signal_and_wait(libc::SIGTERM, 15);
        let took = start.elapsed();
        assert_eq!(st.code(), Some(0), "{st:?}\n{}", a.log_text());
        eprintln!("idle agent exited {} ms after SIGTERM", took.as_millis());
        assert!(
            took < Duration::from_millis(1500),
            "idle agent took {} ms to exit after SIGTERM\n{}",
            took.as_millis(),
            a.log_text()
        );
    });
}

/// Issue 15, the other case: an agent whose manager is gone must not linger
/// on the goodbye it cannot deliver.
#[test]
fn agent_without_its_manager_exits_promptly_on_sigterm() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mut mgr = manager(&[]);
        accept_agent_key(&mgr, "n1");
        let mut a = agent(&mgr, "n1", &fake, &[]);
        let st = mgr.signal_and_wait(libc::SIGTERM, 10);
        assert_eq!(st.code(), Some(0));
        let start = Instant::now();
        let st = a.signal_and_wait(libc::SIGTERM, 15);
        let took = start.elapsed();
        assert_eq!(st.code(), Some(0), "{st:?}\n{}", a.log_text());
        eprintln!(
            "orphaned agent exited {} ms after SIGTERM",
            took.as_millis()
        );
        assert!(
            took < Duration::from_millis(1500),
            "agent without manager took {} ms to exit after SIGTERM\n{}",
            took.as_millis(),
            a.log_text()
        );
    });
}
