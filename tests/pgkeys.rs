//! Keys accepted once (issue 14 point 4): managers sharing a PostgreSQL job
//! store share their key decisions, each manager with its own state_dir (and
//! key directory). Each test skips loudly without `SERVICE_MGR_TEST_PG` and
//! fails without it under CI (see tests/util/pg.rs).

use crate::util::pg::{self, Db, Proxy};
use crate::util::{
    agent_with_own_key, calls, mgmt, run, wait_for, with_timeout, Client, Pki, Proc,
};
use service_mgr::security::{self, Role};
use std::path::Path;
use std::time::{Duration, Instant};

/// A manager of the job store `url` with a state_dir (and key directory) of
/// its own, as `util::manager` makes one.
fn shared_manager(url: &str) -> Proc {
    let pki = Pki::new();
    // Made before the manager starts: made after, it would clash with the
    // other manager's "probe" agent key, shared through the store meanwhile.
    pki.agent_key("probe");
    manager_on(pki, url)
}

/// A manager of the job store `url` on the keys of `pki`.
fn manager_on(pki: Pki, url: &str) -> Proc {
    let mut p = pg::manager_on(&pki, url, None);
    p.pki = Some(pki);
    p
}

/// `mgmt keys ARGS...` on `mgr`'s key store, as root on its host would.
fn keys_cmd(mgr: &Proc, args: &[&str]) -> std::process::Output {
    let keys_dir = mgr.pki.as_ref().unwrap().path("state/keys");
    let mut all = vec!["mgmt", "keys"];
    all.extend_from_slice(args);
    all.extend(["--keys-dir", &keys_dir]);
    run(&all)
}

/// The state `mgr`'s key store gives the key `fp`, if it lists it.
fn key_state(mgr: &Proc, fp: &str) -> Option<String> {
    let out = keys_cmd(mgr, &["list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(fp))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
}

fn wait_key_state(mgr: &Proc, fp: &str, state: &str, secs: u64) {
    wait_for(secs, &format!("key {fp} to be {state}"), || {
        (key_state(mgr, fp).as_deref() == Some(state)).then_some(())
    });
}

/// Whether a status request for `node` through `mgr` ran there.
fn answers(mgr: &Proc, node: &str) -> bool {
    let (out, doc) = Client::new(mgr)
        .nodes(node)
        .cmd("status")
        .service("x")
        .wait("2")
        .run();
    out.status.code() == Some(0) && doc["results"][0]["status"] == "ok"
}

/// `mgmt keys accept` on one manager's host left the key pending on the other
/// managers of the shared store: the agent, connected to another, stayed out
/// (issue 14 point 4). Rejects and deletes reached no other manager either.
#[test]
fn a_key_accepted_on_one_manager_admits_it_on_all() {
    let Some(server) = pg::server("pgkeys::a_key_accepted_on_one_manager_admits_it_on_all") else {
        return;
    };
    with_timeout(120, move || {
        let db = Db::new(&server);
        let m1 = shared_manager(&db.url);
        let m2 = shared_manager(&db.url);
        let dir = tempfile::tempdir().unwrap();
        let (web9, fp) = agent_with_own_key(&m2, "web9", dir.path());
        // Filed pending where it connected, and shown pending on the other.
        wait_key_state(&m2, &fp, "pending", 20);
        wait_key_state(&m1, &fp, "pending", 10);
        let out = keys_cmd(&m1, &["accept", &fp]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let accepted = Instant::now();
        wait_for(15, "the agent to answer through manager 2", || {
            answers(&m2, "web9").then_some(())
        });
        assert!(
            accepted.elapsed() < Duration::from_secs(10),
            "{:?}\nmanager 2's log:\n{}",
            accepted.elapsed(),
            m2.log_text()
        );
        assert_eq!(key_state(&m2, &fp).as_deref(), Some("accepted"));
        assert_eq!(calls(dir.path())[0], "x status");
        let row: String = db
            .client()
            .query_one(
                "SELECT state FROM service_mgr.key_decisions WHERE fingerprint = $1",
                &[&fp],
            )
            .unwrap()
            .get(0);
        assert_eq!(row, "accepted");

        // A reject on manager 1 reaches manager 2, which drops the agent:
        // nothing runs there any more.
        assert!(keys_cmd(&m1, &["reject", &fp]).status.success());
        wait_key_state(&m2, &fp, "rejected", 10);
        let ran = calls(dir.path()).len();
        assert!(!answers(&m2, "web9"));
        assert_eq!(calls(dir.path()).len(), ran);
        // A delete on manager 2 reaches manager 1 (the agent stopped first:
        // else its next hello files it pending again, as a deleted key may).
        drop(web9);
        assert!(keys_cmd(&m2, &["delete", &fp]).status.success());
        wait_for(10, "manager 1 to forget the key", || {
            key_state(&m1, &fp).is_none().then_some(())
        });
    });
}

/// The database away: a manager still serves, its key decision waits, and
/// reaches the other manager once the database is back.
#[test]
fn a_key_decision_made_while_the_database_is_away_is_shared_when_it_returns() {
    let Some(server) = pg::server(
        "pgkeys::a_key_decision_made_while_the_database_is_away_is_shared_when_it_returns",
    ) else {
        return;
    };
    with_timeout(120, move || {
        let db = Db::new(&server);
        let proxy = Proxy::new(&db.url);
        let m1 = shared_manager(&proxy.url(&db.url));
        let m2 = shared_manager(&db.url);
        let dir = tempfile::tempdir().unwrap();
        let (_web8, fp) = agent_with_own_key(&m2, "web8", dir.path());
        wait_key_state(&m1, &fp, "pending", 20);
        proxy.down();
        assert!(keys_cmd(&m1, &["accept", &fp]).status.success());
        wait_for(10, "manager 1 to say the database is away", || {
            m1.log_text()
                .contains("key decisions are not shared with the other managers")
                .then_some(())
        });
        let status = mgmt(&m1.ep("mgmt_endpoint"), "manager.status");
        let said = status["result"]["key_sync_warning"]
            .as_str()
            .unwrap_or_default();
        assert!(
            said.contains("not shared with the other managers"),
            "{status}"
        );
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(key_state(&m2, &fp).as_deref(), Some("pending"));
        proxy.up();
        wait_for(20, "the agent to answer through manager 2", || {
            answers(&m2, "web8").then_some(())
        });
        assert!(m1.log_text().contains("key decisions shared again"));
        let status = mgmt(&m1.ep("mgmt_endpoint"), "manager.status");
        assert!(status["result"]["key_sync_warning"].is_null(), "{status}");
        let log = m1.log_text();
        assert_eq!(
            crate::util::count_lines(&log, "key decisions are not shared with the other managers"),
            1,
            "{log}"
        );
    });
}

/// A manager joining a shared store (its first start on it) with keys of
/// its own: those the store lacks are shared, for the others the store's
/// decision wins (a key it holds as pending does not undo an accept).
#[test]
fn a_manager_joining_the_shared_store_takes_its_decisions() {
    let Some(server) = pg::server("pgkeys::a_manager_joining_the_shared_store_takes_its_decisions")
    else {
        return;
    };
    with_timeout(120, move || {
        let db = Db::new(&server);
        let m1 = shared_manager(&db.url);
        let dir = tempfile::tempdir().unwrap();
        let (web5, web6) = (dir.path().join("web5.key"), dir.path().join("web6.key"));
        let pk5 = security::keygen(&web5, Role::Agent, "web5", false).unwrap();
        let pk6 = security::keygen(&web6, Role::Agent, "web6", false).unwrap();
        let out = keys_cmd(
            &m1,
            &["import", dir.path().join("web5.key.pub").to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Manager 2's own store, before it first starts: web5 and web6 pending.
        let pki = Pki::new();
        pki.agent_key("probe");
        let mut own =
            service_mgr::security::KeyStore::open(Path::new(&pki.path("state/keys"))).unwrap();
        own.submit(&pk5, "127.0.0.1").unwrap();
        own.submit(&pk6, "127.0.0.1").unwrap();
        drop(own);
        wait_for(10, "web5's accept to reach the database", || {
            db.client()
                .query_opt(
                    "SELECT 1 FROM service_mgr.key_decisions WHERE fingerprint = $1 AND state = 'accepted'",
                    &[&pk5.fingerprint()],
                )
                .ok()
                .flatten()
                .map(|_| ())
        });
        let m2 = manager_on(pki, &db.url);
        wait_key_state(&m2, &pk5.fingerprint(), "accepted", 10);
        wait_key_state(&m1, &pk6.fingerprint(), "pending", 10);
        assert_eq!(
            key_state(&m1, &pk5.fingerprint()).as_deref(),
            Some("accepted")
        );
    });
}
