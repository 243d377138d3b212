//! Test harness: starts the real `service-mgr` binary as manager and agents on
//! ephemeral loopback ports, learns readiness from their ready files, and kills
//! every child on drop.

#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const LOOPBACK: &str = "tcp://127.0.0.1:*";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_service-mgr")
}

/// Run `f` on a thread and fail the test if it takes longer than `secs`,
/// so a hung socket fails instead of hanging CI.
pub fn with_timeout<F: FnOnce() + Send + 'static>(secs: u64, f: F) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => t.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: re-raise its panic.
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
        Err(_) => panic!("test timed out after {secs} s"),
    }
}

/// A running daemon process; killed on drop.
pub struct Proc {
    pub child: Child,
    pub ready: Value,
    pub log: PathBuf,
    /// Keys of a manager's test deployment (client key, key store).
    pub pki: Option<Pki>,
    _dir: tempfile::TempDir,
}

/// The keys of one test deployment: a client key the manager accepted, the
/// manager's key store, and agent keys made on demand.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        use service_mgr::security::{keygen, KeyStore, Role};
        let dir = tempfile::tempdir().unwrap();
        keygen(
            &dir.path().join("client.key"),
            Role::Client,
            "tester",
            false,
        )
        .unwrap();
        let mut store = KeyStore::open(&dir.path().join("state/keys")).unwrap();
        store
            .import_accepted(&dir.path().join("client.key.pub"))
            .unwrap();
        Pki { dir }
    }
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
    pub fn client_key(&self) -> String {
        self.path("client.key")
    }
    /// An agent key for `node`, accepted by the manager.
    pub fn agent_key(&self, node: &str) -> String {
        use service_mgr::security::{keygen, KeyStore, Role};
        let file = self.dir.path().join(format!("{node}.key"));
        if !file.exists() {
            keygen(&file, Role::Agent, node, false).unwrap();
            let mut store = KeyStore::open(&self.dir.path().join("state/keys")).unwrap();
            store
                .import_accepted(&self.dir.path().join(format!("{node}.key.pub")))
                .unwrap();
        }
        file.display().to_string()
    }
}

/// A policy that lets the test client do everything (inline TOML for -O).
pub const ALLOW_ALL: &str =
    r#"policy=[{name = "tests", keys = ["tester"], commands = ["*"], services = ["*"]}]"#;

impl Proc {
    pub fn ep(&self, key: &str) -> String {
        self.ready[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in ready file: {}", self.ready))
            .to_owned()
    }
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Send a signal and wait for the exit status.
    pub fn signal_and_wait(&mut self, sig: i32, secs: u64) -> std::process::ExitStatus {
        unsafe { libc::kill(self.pid(), sig) };
        self.wait_exit(secs)
            .expect("daemon did not exit after the signal")
    }
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `service-mgr ARGS... --ready-file F` and wait until F appears.
pub fn spawn_ready(args: &[&str]) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let log = dir.path().join("stderr.log");
    let child = Command::new(bin())
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start service-mgr");
    let mut p = Proc {
        child,
        ready: Value::Null,
        log,
        pki: None,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(bytes) = std::fs::read(&ready) {
            p.ready = serde_json::from_slice(&bytes).unwrap();
            return p;
        }
        if let Some(status) = p.child.try_wait().unwrap() {
            panic!(
                "{args:?} exited with {status} before it was ready:\n{}",
                p.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} not ready in 20 s:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A manager on loopback ephemeral ports, no config file.
pub fn manager(extra: &[&str]) -> Proc {
    let pki = Pki::new();
    let state = format!("state_dir={}", toml_str(&pki.path("state")));
    let mut args = vec!["-O", state.as_str()];
    args.extend_from_slice(extra);
    let mut p = manager_bare(&args);
    p.pki = Some(pki);
    p
}

/// A manager serving unsigned 0.1 peers (allow_unsigned = true).
pub fn manager_compat(extra: &[&str]) -> Proc {
    let mut args = vec!["-O", "allow_unsigned=true"];
    args.extend_from_slice(extra);
    manager(&args)
}

/// A manager with only the loopback endpoints set (secure, keys in the default state_dir
/// unless `extra` sets one).
pub fn manager_bare(extra: &[&str]) -> Proc {
    let mut args = vec![
        "daemon",
        "-D",
        "-f",
        "/dev/null",
        "-O",
        "frontend_endpoint=tcp://127.0.0.1:*",
        "-O",
        "backend_endpoint=tcp://127.0.0.1:*",
        "-O",
        "sink_endpoint=tcp://127.0.0.1:*",
        "-O",
        "mgmt_endpoint=tcp://127.0.0.1:*",
    ];
    args.extend_from_slice(extra);
    spawn_ready(&args)
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
    let mut args = vec!["-O", ALLOW_ALL];
    args.extend_from_slice(extra);
    spawn_agent(
        &mgr.ep("backend_endpoint"),
        &mgr.ep("sink_endpoint"),
        node,
        service_command,
        &pki.agent_key(node),
        &pki.path("client.key.pub"),
        &args,
    )
}

/// `service-mgr agent` in the foreground on loopback with these endpoints,
/// service manager, key and authorized clients (nothing read from $HOME).
pub fn spawn_agent(
    manager_endpoint: &str,
    sink_endpoint: &str,
    node: &str,
    service_command: &Path,
    key_file: &str,
    clients_file: &str,
    extra: &[&str],
) -> Proc {
    let backend = format!("manager_endpoint={manager_endpoint}");
    let sink = format!("sink_endpoint={sink_endpoint}");
    let svc = format!(
        "service_command={}",
        toml_str(&service_command.display().to_string())
    );
    let key = format!("key_file={}", toml_str(key_file));
    let clients = format!("authorized_clients={}", toml_str(clients_file));
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
        "mgmt_endpoint=tcp://127.0.0.1:*",
        "-O",
        &svc,
        "-O",
        &key,
        "-O",
        &clients,
    ];
    args.extend_from_slice(extra);
    spawn_ready(&args)
}

/// Wait until the manager lists `node` as up (announced and subscribed).
pub fn wait_registered(mgr: &Proc, node: &str) {
    wait_agent_state(mgr, node, "up");
}

/// Wait until the manager lists `node` in `state` (up, lost, stopped).
pub fn wait_agent_state(mgr: &Proc, node: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = mgmt(&mgr.ep("mgmt_endpoint"), "manager.agents");
        let found = agents["result"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["node"] == node && a["state"] == state);
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {node} never became {state}: {agents}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn toml_str(s: &str) -> String {
    format!("{:?}", s)
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

/// One raw management round trip over a REQ socket.
pub fn mgmt(endpoint: &str, cmd: &str) -> Value {
    mgmt_req(endpoint, serde_json::json!({ "cmd": cmd }))
}

/// A management request with arguments.
pub fn mgmt_req(endpoint: &str, req: Value) -> Value {
    let reply = req_raw(endpoint, req.to_string().as_bytes());
    serde_json::from_slice(&reply).unwrap()
}

/// Send raw bytes on a REQ socket and return the reply (panics after 5 s).
pub fn req_raw(endpoint: &str, payload: &[u8]) -> Vec<u8> {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::REQ).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(5000).unwrap();
    s.connect(endpoint).unwrap();
    s.send(payload, 0).unwrap();
    s.recv_bytes(0)
        .unwrap_or_else(|e| panic!("no reply from {endpoint}: {e}"))
}

/// A fake service(8): `fake NAME CMD`. Behaviour by name:
/// `slow*` sleeps 30 s, `nap*` sleeps 1 s, `big*` prints 1 MiB plus bytes that are not UTF-8,
/// `stopped*` exits 3, `fail*` exits 1, anything else prints and exits 0.
/// Every call is appended to `calls.log` beside the script.
pub fn fake_service(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-service");
    let calls = dir.join("calls.log");
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
echo "$1 $2" >> '{calls}'
case "$1" in
  slow*) sleep 30 ;;
  nap*) sleep 1; echo "$1 woke up" ;;
  big*) head -c 1048576 /dev/zero | tr '\0' 'y'; printf '\377\376 not utf-8\n' ;;
  stopped*) echo "$1 is not running"; exit 3 ;;
  fail*) echo "$1: something broke" >&2; exit 1 ;;
  *) echo "$1 $2 ok" ;;
esac
"#,
            calls = calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Lines of the fake service's call log.
pub fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Run the binary (optionally under another name via a symlink) and collect its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Run the client against `mgr` and parse its JSON output.
pub fn client(
    mgr: &Proc,
    topic: &str,
    cmd: &str,
    service: &str,
    extra: &[&str],
) -> (Output, Value) {
    let mut args = vec!["-T", topic, "-c", cmd, "-s", service];
    args.extend_from_slice(extra);
    client_args(mgr, &args)
}

/// Run `service-mgr client -e <mgr> ARGS...` without parsing stdout.
pub fn client_raw(mgr: &Proc, args: &[&str]) -> (Output, String) {
    let ep = mgr.ep("frontend_endpoint");
    let key = mgr.pki.as_ref().map(Pki::client_key).unwrap_or_default();
    let mut all = vec!["client", "-e", &ep];
    if !key.is_empty() {
        all.extend(["-k", key.as_str()]);
    }
    all.extend_from_slice(args);
    let out = run(&all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

/// Run `service-mgr client -e <mgr> ARGS...` and parse its JSON output.
pub fn client_args(mgr: &Proc, args: &[&str]) -> (Output, Value) {
    let (out, _) = client_raw(mgr, args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, v)
}

/// Stop a manager with SIGTERM (it must exit 0) and start it again on the same
/// ports and state, as an operator's restart would.
pub fn restart_manager(mgr: &mut Proc) -> Proc {
    let endpoints: Vec<String> = [
        "frontend_endpoint",
        "backend_endpoint",
        "sink_endpoint",
        "mgmt_endpoint",
    ]
    .iter()
    .map(|k| format!("{k}={}", mgr.ep(k)))
    .collect();
    assert_eq!(mgr.signal_and_wait(libc::SIGTERM, 10).code(), Some(0));
    let state = format!("state_dir={:?}", mgr.pki.as_ref().unwrap().path("state"));
    let mut args = vec!["daemon", "-D", "-f", "/dev/null", "-O", state.as_str()];
    for e in &endpoints {
        args.extend(["-O", e.as_str()]);
    }
    let mut again = spawn_ready(&args);
    again.pki = mgr.pki.take();
    again
}
