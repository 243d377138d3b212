//! A test deployment: a manager on loopback ephemeral ports with its own keys,
//! agents admitted to it, and waits on what the manager reports.

use super::{
    calls, client::Client, count_lines, mgmt, pki::toml_str, spawn_ready, spawn_ready_with,
    wait_for, Pki, Proc, Running, ALLOW_ALL, LOOPBACK,
};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The manager's four sockets, as named in its config and ready file.
pub const MANAGER_ENDPOINTS: [&str; 4] = [
    "frontend_endpoint",
    "backend_endpoint",
    "sink_endpoint",
    "mgmt_endpoint",
];

/// A manager on loopback ephemeral ports, no config file.
/// The test client may also shut it down (`mgmt_admin_keys`).
pub fn manager(extra: &[&str]) -> Proc {
    manager_with(extra, |_| {})
}

/// As [`manager`], with `setup` applied to its command (e.g. [`soft_nofile`](super::soft_nofile)).
pub fn manager_with(extra: &[&str], setup: impl FnOnce(&mut Command)) -> Proc {
    let pki = Pki::new();
    let state = format!("state_dir={}", toml_str(&pki.path("state")));
    let mut args = vec!["-O", state.as_str(), "-O", r#"mgmt_admin_keys=["tester"]"#];
    args.extend_from_slice(extra);
    let mut p = manager_bare(&args, setup);
    register_manager(&p, &pki);
    p.pki = Some(pki);
    p
}

/// Register a manager's endpoints with the keys that reach them: its own
/// key (pinned by command lines; held by raw management round trips, as
/// root on the manager's host would) and the test client's key.
pub fn register_manager(p: &Proc, pki: &Pki) {
    use super::keys::{register, Creds};
    let envs = |line: &str| {
        vec![
            ("SERVICE_MGR_MANAGER_KEY".to_owned(), line.to_owned()),
            ("SERVICE_MGR_KEY".to_owned(), pki.client_key()),
        ]
    };
    let Some(line) = p.ready["manager_key"].as_str() else {
        // Its other ports may have been a secure manager's a moment ago: a
        // raw socket must not speak CURVE to them (CI once hung a PUSH
        // handshaking with a plaintext sink that way).
        for k in ["backend_endpoint", "sink_endpoint", "result_endpoint"] {
            if let Some(ep) = p.ready[k].as_str() {
                super::keys::forget(ep);
            }
        }
        for k in ["frontend_endpoint", "mgmt_endpoint"] {
            register(
                &p.ep(k),
                Creds {
                    envs: envs("plaintext"),
                    curve: None,
                },
            );
        }
        return;
    };
    let own = service_mgr::security::KeyPair::load(Path::new(&pki.path("state/manager.key")))
        .ok()
        .map(std::sync::Arc::new);
    let server: service_mgr::security::PublicKey = line.parse().unwrap();
    let client = service_mgr::security::KeyPair::load(Path::new(&pki.client_key()))
        .ok()
        .map(|k| (server.curve_key(), std::sync::Arc::new(k)));
    register(
        &p.ep("frontend_endpoint"),
        Creds {
            envs: envs(line),
            curve: client.clone(),
        },
    );
    register(
        &p.ep("result_endpoint"),
        Creds {
            envs: Vec::new(),
            curve: client,
        },
    );
    // Raw sockets on the agents' side speak as an accepted agent of their own,
    // "probe": what they send in another node's name is not believed.
    let probe = service_mgr::security::KeyPair::load(Path::new(&pki.agent_key("probe")))
        .ok()
        .map(|k| (server.curve_key(), std::sync::Arc::new(k)));
    for k in ["backend_endpoint", "sink_endpoint"] {
        register(
            &p.ep(k),
            Creds {
                envs: Vec::new(),
                curve: probe.clone(),
            },
        );
    }
    register(
        &p.ep("mgmt_endpoint"),
        Creds {
            envs: envs(line),
            curve: own.map(|k| (server.curve_key(), k)),
        },
    );
}

/// What an agent of `mgr` pins: its key, or plaintext for a 0.1-compatible one.
pub fn manager_key_setting(mgr: &Proc) -> String {
    format!(
        "manager_key={}",
        toml_str(mgr.ready["manager_key"].as_str().unwrap_or("plaintext"))
    )
}

/// A manager serving unsigned 0.1 peers (allow_unsigned = true).
pub fn manager_compat(extra: &[&str]) -> Proc {
    let mut args = vec!["-O", "allow_unsigned=true"];
    args.extend_from_slice(extra);
    manager(&args)
}

/// A manager with only the loopback endpoints set (secure, keys in the default state_dir
/// unless `extra` sets one).
fn manager_bare(extra: &[&str], setup: impl FnOnce(&mut Command)) -> Proc {
    let endpoints = MANAGER_ENDPOINTS.map(|k| format!("{k}={LOOPBACK}"));
    let mut args = vec!["daemon", "-D", "-f", "/dev/null"];
    for e in &endpoints {
        args.extend(["-O", e.as_str()]);
    }
    args.extend_from_slice(extra);
    spawn_ready_with(&args, setup)
}

/// Stop a manager with SIGTERM (it must exit 0) and start it again on the same
/// ports and state, as an operator's restart would.
pub fn restart_manager(mgr: &mut Proc) -> Proc {
    let endpoints = MANAGER_ENDPOINTS.map(|k| format!("{k}={}", mgr.ep(k)));
    assert_eq!(mgr.signal_and_wait(libc::SIGTERM, 10).code(), Some(0));
    let state = format!("state_dir={:?}", mgr.pki.as_ref().unwrap().path("state"));
    let mut args = vec!["daemon", "-D", "-f", "/dev/null", "-O", state.as_str()];
    for e in &endpoints {
        args.extend(["-O", e.as_str()]);
    }
    let mut again = spawn_ready(&args);
    again.pki = mgr.pki.take();
    if let Some(pki) = &again.pki {
        register_manager(&again, pki);
    }
    again
}

/// An agent named `node` connected to `mgr`, using `service_command` as its
/// service manager, with an accepted key and a policy that lets the test client
/// do everything; returns once the manager lists it as up.
pub fn agent(mgr: &Proc, node: &str, service_command: &Path, extra: &[&str]) -> Proc {
    let p = agent_unregistered(mgr, node, service_command, extra);
    wait_registered(mgr, node);
    p
}

/// As `agent`, without waiting for the manager to admit it.
pub fn agent_unregistered(mgr: &Proc, node: &str, service_command: &Path, extra: &[&str]) -> Proc {
    let pki = mgr
        .pki
        .as_ref()
        .expect("a manager started by util::manager");
    let pin = manager_key_setting(mgr);
    let mut args = vec!["-O", ALLOW_ALL, "-O", &pin];
    args.extend_from_slice(extra);
    spawn_agent(
        &mgr.ep("backend_endpoint"),
        &mgr.ep("sink_endpoint"),
        node,
        service_command,
        &pki.agent_key(node),
        Some(&pki.path("client.key.pub")),
        &args,
    )
}

/// An agent of `mgr` whose (accepted) key is `key_file` and whose config sets
/// no `authorized_clients`, so that it reads the default one; returns once the
/// manager lists it as up.
pub fn agent_default_clients(
    mgr: &Proc,
    node: &str,
    service_command: &Path,
    key_file: &Path,
) -> Proc {
    let pin = manager_key_setting(mgr);
    let p = spawn_agent(
        &mgr.ep("backend_endpoint"),
        &mgr.ep("sink_endpoint"),
        node,
        service_command,
        &key_file.display().to_string(),
        None,
        &["-O", ALLOW_ALL, "-O", &pin],
    );
    wait_registered(mgr, node);
    p
}

/// An agent of `mgr` (started by `util::manager*`) that also runs unsigned
/// (0.1) requests; returns once the manager lists it as up.
pub fn compat_agent(mgr: &Proc, node: &str, service_command: &Path) -> Proc {
    accept_agent_key(mgr, node);
    agent(mgr, node, service_command, &["-O", "allow_unsigned=true"])
}

/// Make and accept `node`'s agent key, and wait until the manager has read it.
///
/// Before 3b068bb a hello that arrived before the manager's next key store
/// reload filed the already accepted key as pending for good (regression test:
/// robustness::b_agent_key_accepted_just_before_its_hello_is_admitted); this
/// keeps the tests here independent of that timing.
pub fn accept_agent_key(mgr: &Proc, node: &str) {
    let pki = mgr
        .pki
        .as_ref()
        .expect("a manager started by util::manager");
    if Path::new(&pki.path(&format!("{node}.key"))).exists() {
        return;
    }
    let before = count_lines(&mgr.log_text(), "key store changed");
    pki.agent_key(node);
    wait_for(10, "the manager to reload its key store", || {
        (count_lines(&mgr.log_text(), "key store changed") > before).then_some(())
    });
}

/// An agent connected to endpoints the test chose (e.g. sockets the test
/// binds itself): unsigned requests allowed, its own key and an empty
/// client list in `dir`, nothing read from $HOME.
pub fn agent_at(
    manager_endpoint: &str,
    sink_endpoint: &str,
    node: &str,
    service_command: &Path,
    dir: &Path,
    extra: &[&str],
) -> Proc {
    let mut args = vec![
        "-O",
        "allow_unsigned=true",
        "-O",
        "manager_key=\"plaintext\"",
    ];
    args.extend_from_slice(extra);
    spawn_agent(
        manager_endpoint,
        sink_endpoint,
        node,
        service_command,
        &dir.join(format!("{node}.key")).display().to_string(),
        Some(&dir.join("authorized_clients").display().to_string()),
        &args,
    )
}

/// `service-mgr agent` in the foreground on loopback with these endpoints,
/// service manager, key and authorized clients (nothing read from $HOME;
/// without `clients_file`, the default beside the key).
fn spawn_agent(
    manager_endpoint: &str,
    sink_endpoint: &str,
    node: &str,
    service_command: &Path,
    key_file: &str,
    clients_file: Option<&str>,
    extra: &[&str],
) -> Proc {
    let backend = format!("manager_endpoint={manager_endpoint}");
    let sink = format!("sink_endpoint={sink_endpoint}");
    let svc = format!(
        "service_command={}",
        toml_str(&service_command.display().to_string())
    );
    let key = format!("key_file={}", toml_str(key_file));
    let clients = clients_file.map(|f| format!("authorized_clients={}", toml_str(f)));
    let mgmt = format!("mgmt_endpoint={LOOPBACK}");
    let mut args = vec![
        "agent",
        "-D",
        "-f",
        "/dev/null",
        "-n",
        node,
        "-O",
        &backend,
        "-O",
        &sink,
        "-O",
        &mgmt,
        "-O",
        &svc,
        "-O",
        &key,
    ];
    if let Some(clients) = &clients {
        args.extend(["-O", clients]);
    }
    args.extend_from_slice(extra);
    let p = spawn_ready(&args);
    let default_clients = Path::new(key_file).with_file_name("authorized_clients");
    let clients_file = clients_file.unwrap_or(default_clients.to_str().unwrap());
    register_agent(&p, key_file, clients_file, &args);
    p
}

/// Register an agent's management endpoint: command lines pin its key and
/// sign with the test client's key (authorized); raw round trips hold the
/// agent's own key. A 0.1-compatible agent (allow_unsigned) is plaintext.
fn register_agent(p: &Proc, key_file: &str, clients_file: &str, args: &[&str]) {
    use super::keys::{register, Creds};
    let client_key = Path::new(clients_file).with_file_name("client.key");
    let mut envs = Vec::new();
    if client_key.exists() {
        envs.push((
            "SERVICE_MGR_KEY".to_owned(),
            client_key.display().to_string(),
        ));
    }
    let plaintext = args
        .windows(2)
        .any(|w| w[0] == "-O" && w[1] == "allow_unsigned=true");
    let own = service_mgr::security::KeyPair::load(Path::new(key_file)).ok();
    let curve = match (plaintext, own) {
        (false, Some(own)) => {
            envs.push((
                "SERVICE_MGR_SERVER_KEY".to_owned(),
                own.public().to_string(),
            ));
            Some((own.public().curve_key(), std::sync::Arc::new(own)))
        }
        _ => {
            envs.push(("SERVICE_MGR_SERVER_KEY".to_owned(), "plaintext".to_owned()));
            None
        }
    };
    register(&p.ep("mgmt_endpoint"), Creds { envs, curve });
}

/// Wait until the manager lists `node` as up (announced and subscribed).
pub fn wait_registered(mgr: &Proc, node: &str) {
    wait_agent_state(mgr, node, "up");
}

/// Whether the manager lists `node` in `state` now, and the list it gave.
pub fn agent_listed(mgr: &Proc, node: &str, state: &str) -> (bool, Value) {
    let agents = mgmt(&mgr.ep("mgmt_endpoint"), "manager.agents");
    let found = agents["result"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["node"] == node && a["state"] == state);
    (found, agents)
}

/// Wait until the manager lists `node` in `state` (up, lost, stopped).
pub fn wait_agent_state(mgr: &Proc, node: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (found, agents) = agent_listed(mgr, node, state);
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {node} never became {state}: {agents}\nmanager log:\n{}",
            mgr.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until the manager reports a subscription to `topic`.
pub fn wait_subscribed(mgr: &Proc, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = mgmt(&mgr.ep("mgmt_endpoint"), "manager.status");
        if status["result"]["subscriptions"][topic]
            .as_u64()
            .unwrap_or(0)
            > 0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {topic} never subscribed: {status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Assert that `mgr` is alive and still serves a request end to end: the
/// (signed) client gets a real result from the agent `node`.
pub fn assert_serves(mgr: &mut Proc, node: &str, after: &str) {
    assert!(
        mgr.alive(),
        "the manager died after {after}:\n{}",
        mgr.log_text()
    );
    let (out, doc) = Client::new(mgr)
        .topic(node)
        .cmd("status")
        .service("probe")
        .wait("10")
        .run();
    let r = &doc["results"][0];
    assert_eq!(
        (r["node"].as_str(), r["status"].as_str()),
        (Some(node), Some("ok")),
        "after {after}, no good result: {doc}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["result"]["stdout"], "probe status ok\n", "{doc}");
    assert_eq!(out.status.code(), Some(0), "{doc}");
}

/// A client asking `node` (an agent of `mgr` running the fake service in
/// `dir`) to restart `service`, waiting up to `wait` seconds; returns once
/// the agent runs the command, for tests that then stop or signal it.
pub fn busy_agent(mgr: &Proc, dir: &Path, node: &str, service: &str, wait: &str) -> Running {
    let client = Client::new(mgr)
        .nodes(node)
        .cmd("restart")
        .service(service)
        .wait(wait)
        .spawn();
    wait_for(10, "the agent to start the command", || {
        (!calls(dir).is_empty()).then_some(())
    });
    client
}

/// An agent of `mgr` named `node` with a key of its own that the manager has
/// not accepted (its files in `dir`), trusting the test client.
pub fn agent_with_own_key(mgr: &Proc, node: &str, dir: &Path) -> (Proc, String) {
    let key = dir.join(format!("{node}.key"));
    let pk = service_mgr::security::keygen(&key, service_mgr::security::Role::Agent, node, false)
        .unwrap();
    std::fs::copy(
        mgr.pki.as_ref().unwrap().path("client.key.pub"),
        dir.join("authorized_clients"),
    )
    .unwrap();
    let fake = super::fake_service(dir);
    let agent = agent_at(
        &mgr.ep("backend_endpoint"),
        &mgr.ep("sink_endpoint"),
        node,
        &fake,
        dir,
        &[
            "-O",
            "allow_unsigned=false",
            "-O",
            ALLOW_ALL,
            "-O",
            &manager_key_setting(mgr),
        ],
    );
    (agent, pk.fingerprint())
}

/// Regression: a 0.1-compatible manager that got a port a secure manager of
/// an earlier test had used kept that port's CURVE registration, so a raw
/// PUSH to its sink handshook CURVE with a plaintext socket and blocked
/// forever (CI: `limits::job_list_and_job_reads_come_in_pages` timed out).
#[test]
fn a_plaintext_manager_on_a_former_secure_port_is_reached_in_plaintext() {
    super::with_timeout(60, || {
        let mut secure = manager(&[]);
        let sink = secure.ep("sink_endpoint");
        assert_eq!(secure.signal_and_wait(libc::SIGTERM, 10).code(), Some(0));
        let sink_on = format!("sink_endpoint={sink}");
        let compat = manager_compat(&["-O", &sink_on]);
        assert_eq!(compat.ep("sink_endpoint"), sink);
        let ctx = zmq::Context::new();
        let push = super::connect(&ctx, zmq::PUSH, &sink);
        let uuid = "c".repeat(32);
        let result = serde_json::json!({"msg": "Executed service status request",
            "uuid": uuid, "node": "n1", "result": {"node": "n1", "service": "s",
            "returncode": 0, "stdout": "ok", "stderr": "", "system": "Linux", "version": "1"}});
        push.send(result.to_string().as_bytes(), zmq::DONTWAIT)
            .unwrap();
        let mgmt = compat.ep("mgmt_endpoint");
        wait_for(20, "the result sent in plaintext to be stored", || {
            let job = super::mgmt_req(
                &mgmt,
                serde_json::json!({"cmd": "manager.job", "uuid": uuid}),
            );
            (job["result"]["results_total"] == 1).then_some(())
        });
    });
}
