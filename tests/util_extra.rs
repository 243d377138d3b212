//! More harness for the compatibility, robustness and daemon tests: raw
//! sockets on loopback, a fake service(8) with pauses, polling helpers and
//! agents that talk to sockets the test binds itself.

#![allow(dead_code)]

use crate::util::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Poll `f` every 5 ms until it gives `Some`, or panic after `secs` naming `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A socket of `kind` bound to 127.0.0.1 on an ephemeral port, and its endpoint.
pub fn bind_loopback(ctx: &zmq::Context, kind: zmq::SocketType) -> (zmq::Socket, String) {
    let s = ctx.socket(kind).unwrap();
    s.set_linger(0).unwrap();
    s.bind(LOOPBACK).unwrap();
    let ep = s.get_last_endpoint().unwrap().unwrap();
    assert!(ep.starts_with("tcp://127.0.0.1:"), "{ep}");
    (s, ep)
}

/// A socket of `kind` connected to `endpoint`, linger 0.
pub fn connect(ctx: &zmq::Context, kind: zmq::SocketType, endpoint: &str) -> zmq::Socket {
    let s = ctx.socket(kind).unwrap();
    s.set_linger(0).unwrap();
    s.connect(endpoint).unwrap();
    s
}

/// One multipart message within `ms` milliseconds, or `None`.
pub fn recv_within(s: &zmq::Socket, ms: i64) -> Option<Vec<Vec<u8>>> {
    let mut items = [s.as_poll_item(zmq::POLLIN)];
    let deadline = Instant::now() + Duration::from_millis(ms.max(0) as u64);
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as i64;
        match zmq::poll(&mut items, left) {
            Ok(n) if n > 0 => return Some(s.recv_multipart(0).unwrap()),
            Ok(_) => return None,
            Err(zmq::Error::EINTR) if left > 0 => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Parse a frame as JSON, panicking with the frame's text if it is not.
pub fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Whether a reply is a 0.1 error reply `{"success": -1, "msg": "..."}`; its msg.
pub fn error_msg(reply: &Value) -> String {
    assert_eq!(reply["success"], -1, "not an error reply: {reply}");
    reply["msg"]
        .as_str()
        .unwrap_or_else(|| panic!("error reply without msg: {reply}"))
        .to_owned()
}

/// The fake service(8) of `util::fake_service` plus two names that take a
/// while: `pause*` sleeps 1.5 s, `brief*` 0.3 s, then answer like the others.
/// Every call is appended to `calls.log` beside the script.
pub fn fake_service_ext(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-service");
    let calls = dir.join("calls.log");
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
echo "$1 $2" >> '{calls}'
case "$1" in
  pause*) sleep 1.5; echo "$1 $2 ok" ;;
  brief*) sleep 0.3; echo "$1 $2 ok" ;;
  slow*) sleep 30 ;;
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

/// `service-mgr ARGS...` with no client key anywhere (unsigned, as a 0.1 client).
pub fn run_unsigned(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env(
            "SERVICE_MGR_KEY",
            "/nonexistent/service-mgr-test/client.key",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `service-mgr ARGS...` with `envs` set; stdout and stderr collected.
pub fn run_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).stdin(Stdio::null());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
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
    let mut args = vec!["-O", "allow_unsigned=true"];
    args.extend_from_slice(extra);
    spawn_agent(
        manager_endpoint,
        sink_endpoint,
        node,
        service_command,
        &dir.join(format!("{node}.key")).display().to_string(),
        &dir.join("authorized_clients").display().to_string(),
        &args,
    )
}

/// Assert that `mgr` is alive and still serves a request end to end: the
/// (signed) client gets a real result from the agent `node`.
pub fn assert_serves(mgr: &mut Proc, node: &str, after: &str) {
    assert!(
        mgr.alive(),
        "the manager died after {after}:\n{}",
        mgr.log_text()
    );
    let (out, doc) = client(mgr, node, "status", "probe", &["-w", "10"]);
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

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// A process the test started but that is not its child (a detached daemon):
/// SIGKILLed by pid on drop if still alive.
pub struct Detached {
    pub pid: i32,
}

impl Drop for Detached {
    fn drop(&mut self) {
        if self.pid > 0 && pid_alive(self.pid) {
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// Count the lines of `text` that contain `needle`.
pub fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}
