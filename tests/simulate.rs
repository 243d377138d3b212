//! `agent --simulate N`: a fleet in one process speaks the real, signed protocol.

use crate::util::*;
use service_mgr::agent::simulate;
use service_mgr::security::{keygen, KeyStore, Role};
use std::collections::BTreeSet;
use std::process::Command;

/// A manager and `n` simulated agents whose keys it accepted.
pub(crate) fn fleet(n: usize) -> (Proc, Proc) {
    let mgr = manager(&[]);
    let pki = mgr.pki.as_ref().unwrap();
    let list = simulate::ensure_keys(&pki.dir.path().join("simulated"), "sim-", n).unwrap();
    KeyStore::open(&pki.dir.path().join("state/keys"))
        .unwrap()
        .import_accepted(&list)
        .unwrap();
    let count = n.to_string();
    let pin = manager_key_setting(&mgr);
    let backend = format!("manager_endpoint={}", mgr.ep("backend_endpoint"));
    let sink = format!("sink_endpoint={}", mgr.ep("sink_endpoint"));
    let key = format!("key_file={}", toml_str(&pki.path("agent.key")));
    let clients = format!(
        "authorized_clients={}",
        toml_str(&pki.path("client.key.pub"))
    );
    let sim = spawn_ready(&[
        "agent",
        "-D",
        "-f",
        "/dev/null",
        "--simulate",
        &count,
        "-O",
        &backend,
        "-O",
        &sink,
        "-O",
        "mgmt_endpoint=tcp://127.0.0.1:*",
        "-O",
        &key,
        "-O",
        &clients,
        "-O",
        ALLOW_ALL,
        "-O",
        &pin,
    ]);
    // The simulator's management socket is plaintext (a load-testing tool).
    keys::register(
        &sim.ep("mgmt_endpoint"),
        keys::Creds {
            envs: vec![("SERVICE_MGR_SERVER_KEY".into(), "plaintext".into())],
            curve: None,
        },
    );
    assert_eq!(sim.ready["nodes"], n);
    assert_eq!(sim.ready["last"], simulate::node_name("sim-", n));
    // Every node up, seen in one listing per try (not one listing per node).
    let all: BTreeSet<String> = (1..=n).map(|i| simulate::node_name("sim-", i)).collect();
    wait_for(60, "every simulated agent up", || {
        let agents = mgmt(&mgr.ep("mgmt_endpoint"), "manager.agents");
        let up: BTreeSet<String> = agents["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "up")
            .filter_map(|a| a["node"].as_str().map(str::to_owned))
            .collect();
        all.is_subset(&up).then_some(())
    });
    (mgr, sim)
}

fn nodes_with(v: &serde_json::Value, field: &str, value: &str) -> BTreeSet<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r[field] == value)
        .map(|r| r["node"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn simulated_fleet_answers_signed_and_sealed() {
    with_timeout(90, || {
        let n = 25;
        let (mgr, mut sim) = fleet(n);
        let all: BTreeSet<String> = (1..=n).map(|i| simulate::node_name("sim-", i)).collect();

        let (out, v) = Client::new(&mgr)
            .topic("any")
            .cmd("status")
            .service("sshd")
            .run();
        assert!(out.status.success(), "{v}");
        assert_eq!(v["results"].as_array().unwrap().len(), n, "{v}");
        for r in v["results"].as_array().unwrap() {
            assert_eq!(r["verified"], true, "{r}");
            assert_eq!(r["status"], "ok", "{r}");
        }
        assert_eq!(nodes_with(&v, "state", "running"), all);

        // The fake service manager keeps state per node.
        let (out, v) = Client::new(&mgr)
            .topic("sim-0003")
            .cmd("stop")
            .service("nginx")
            .run();
        assert!(out.status.success(), "{v}");
        let (_, v) = Client::new(&mgr)
            .glob("sim-000*")
            .cmd("status")
            .service("nginx")
            .run();
        assert_eq!(v["results"].as_array().unwrap().len(), 9, "{v}");
        assert_eq!(
            nodes_with(&v, "state", "stopped"),
            ["sim-0003".to_owned()].into()
        );

        // A client the manager accepted but the agents do not authorize is
        // refused by every node, each refusal signed by that node.
        let pki = mgr.pki.as_ref().unwrap();
        let stranger = pki.dir.path().join("stranger.key");
        keygen(&stranger, Role::Client, "stranger", false).unwrap();
        KeyStore::open(&pki.dir.path().join("state/keys"))
            .unwrap()
            .import_accepted(&pki.dir.path().join("stranger.key.pub"))
            .unwrap();
        let out = Client::new(&mgr)
            .key(stranger.to_str().unwrap())
            .topic("any")
            .cmd("status")
            .service("sshd")
            .format("json")
            .output();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(nodes_with(&v, "status", "refused"), all, "{v}");
        assert!(!out.status.success());

        // One management socket for the fleet; a signed stop ends it and the
        // manager sees every node leave.
        let status = mgmt(&sim.ep("mgmt_endpoint"), "agent.status");
        assert_eq!(status["result"]["nodes"], n, "{status}");
        assert_eq!(status["result"]["simulated"], true, "{status}");
        let out = run(&[
            "agent",
            "stop",
            "-e",
            &sim.ep("mgmt_endpoint"),
            "-k",
            &pki.client_key(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            sim.wait_exit(20).is_some_and(|s| s.success()),
            "{}",
            sim.log_text()
        );
        wait_agent_state(&mgr, "sim-0001", "stopped");
        wait_agent_state(&mgr, &simulate::node_name("sim-", n), "stopped");
    });
}

#[test]
fn simulate_refuses_what_it_cannot_do() {
    for (args, says) in [
        (&["--simulate", "0"][..], "1 to"),
        (
            &["--simulate", "3", "--node-prefix", "a b"][..],
            "not valid node names",
        ),
        (
            &["--simulate", "3", "--node-prefix", "../x"][..],
            "not valid node names",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let key = format!(
            "key_file={}",
            toml_str(&dir.path().join("agent.key").display().to_string())
        );
        let out = output(
            Command::new(bin())
                .args([
                    "agent",
                    "-f",
                    "/dev/null",
                    "-O",
                    &key,
                    "-O",
                    "mgmt_endpoint=tcp://127.0.0.1:*",
                ])
                .args(args),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn fleet_keys_are_kept_between_runs() {
    let dir = tempfile::tempdir().unwrap();
    let first = simulate::ensure_keys(dir.path(), "web-", 3).unwrap();
    let text = std::fs::read_to_string(&first).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(
        text.lines().all(|l| l.starts_with("smgr1 agent web-000")),
        "{text}"
    );
    let again = simulate::ensure_keys(dir.path(), "web-", 3).unwrap();
    assert_eq!(std::fs::read_to_string(again).unwrap(), text);
}

/// Issue 13.6: with a few hundred agents the manager took tens of seconds to
/// exit on SIGTERM (libzmq's teardown of every connection), past systemd's
/// stop timeout; it must exit at once, its job store written.
#[test]
fn manager_with_a_fleet_exits_promptly_on_sigterm() {
    with_timeout(150, || {
        // The smallest fleet whose stop took well over 5 s before (8-15 s here).
        let n = 500;
        let (mut mgr, mut sim) = fleet(n);
        let (out, v) = Client::new(&mgr)
            .topic("any")
            .cmd("status")
            .service("sshd")
            .run();
        assert!(out.status.success(), "{v}");
        assert_eq!(v["results"].as_array().unwrap().len(), n, "{v}");
        let job = v["job"].as_str().unwrap().to_owned();

        let endpoints = MANAGER_ENDPOINTS.map(|k| format!("{k}={}", mgr.ep(k)));
        let asked = std::time::Instant::now();
        // SAFETY: kill(2) on our own unreaped child's pid.
        unsafe { libc::kill(mgr.pid(), libc::SIGTERM) };
        let st = mgr.wait_exit(120);
        let took = asked.elapsed();
        eprintln!(
            "manager of {n} agents exited {} ms after SIGTERM",
            took.as_millis()
        );
        assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", mgr.log_text());
        assert!(
            took < std::time::Duration::from_secs(5),
            "the manager of {n} agents took {} ms to exit after SIGTERM",
            took.as_millis()
        );

        // Started again on the same state, it has the job's results.
        let state = format!("state_dir={:?}", mgr.pki.as_ref().unwrap().path("state"));
        let mut args = vec!["daemon", "-f", "/dev/null", "-O", state.as_str()];
        for e in &endpoints {
            args.extend(["-O", e.as_str()]);
        }
        let again = spawn_ready(&args);
        register_manager(&again, mgr.pki.as_ref().unwrap());
        let r = mgmt_req(
            &again.ep("mgmt_endpoint"),
            serde_json::json!({"cmd": "manager.job", "uuid": job}),
        );
        assert_eq!(nodes_with(&r["result"], "status", "ok").len(), n, "{r}");

        // The fleet's process stops promptly too.
        let asked = std::time::Instant::now();
        let st = sim.signal_and_wait(libc::SIGTERM, 60);
        let took = asked.elapsed();
        eprintln!(
            "{n} simulated agents exited {} ms after SIGTERM",
            took.as_millis()
        );
        assert_eq!(st.code(), Some(0), "{}", sim.log_text());
        assert!(
            took < std::time::Duration::from_secs(5),
            "{n} simulated agents took {} ms to exit after SIGTERM",
            took.as_millis()
        );
    });
}
