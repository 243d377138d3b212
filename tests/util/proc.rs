//! Child processes of a test: the real binary started and awaited, readiness
//! from ready files, a per-test timeout, and every child killed on drop, panic
//! or timeout.

use serde_json::Value;
use std::cell::RefCell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_service-mgr")
}

/// The children one `with_timeout` body started. The body runs on its own
/// thread, which never unwinds if it hangs, so on timeout `with_timeout` kills
/// them from here; the test harness' other tests (and their children) are
/// untouched.
#[derive(Default)]
struct Scope {
    /// Each child with its command line, named when a timeout finds it running.
    children: Mutex<Vec<(Weak<Mutex<Child>>, String)>>,
    detached: Mutex<Vec<i32>>,
}

impl Scope {
    fn kill_all(&self) {
        for (child, _) in self.children.lock().unwrap().iter() {
            if let Some(child) = child.upgrade() {
                // A reaped child is not signalled again (std checks), so a
                // recycled pid is never hit.
                let _ = child.lock().unwrap().kill();
            }
        }
        for &pid in self.detached.lock().unwrap().iter() {
            kill_detached(pid);
        }
    }

    /// The command lines of the children still running: what a timed-out
    /// body was most likely waiting for.
    fn running(&self) -> Vec<String> {
        let children = self.children.lock().unwrap();
        let alive = children.iter().filter_map(|(child, cmd)| {
            let child = child.upgrade()?;
            let running = matches!(child.lock().unwrap().try_wait(), Ok(None));
            running.then(|| cmd.clone())
        });
        alive.collect()
    }
}

thread_local! {
    static SCOPE: RefCell<Option<Arc<Scope>>> = const { RefCell::new(None) };
}

fn with_scope(f: impl FnOnce(&Scope)) {
    SCOPE.with(|s| {
        if let Some(scope) = s.borrow().as_ref() {
            f(scope)
        }
    });
}

/// Run `f` on a thread and fail the test if it takes longer than `secs`,
/// so a hung socket fails instead of hanging CI. Whatever `f` started is
/// killed when it times out or panics.
pub fn with_timeout<F: FnOnce() + Send + 'static>(secs: u64, f: F) {
    let scope = Arc::new(Scope::default());
    let inner = scope.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        SCOPE.with(|s| *s.borrow_mut() = Some(inner));
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => t.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: drops have run; kill what they missed, re-raise.
            let joined = t.join();
            scope.kill_all();
            if let Err(e) = joined {
                std::panic::resume_unwind(e);
            }
        }
        Err(_) => {
            let running = scope.running();
            scope.kill_all();
            panic!(
                "test timed out after {secs} s; still running: {}",
                if running.is_empty() {
                    "none of its processes".into()
                } else {
                    running.join("; ")
                }
            );
        }
    }
}

/// A child registered with the current test's scope; killed and reaped on drop.
struct Tracked(Arc<Mutex<Child>>);

impl Tracked {
    fn spawn(cmd: &mut Command) -> Tracked {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let child = Arc::new(Mutex::new(child));
        let line = format!("{cmd:?}");
        with_scope(|s| {
            s.children
                .lock()
                .unwrap()
                .push((Arc::downgrade(&child), line))
        });
        Tracked(child)
    }
    fn id(&self) -> u32 {
        self.0.lock().unwrap().id()
    }
    fn try_wait(&self) -> Option<ExitStatus> {
        self.0.lock().unwrap().try_wait().unwrap()
    }
    /// Wait for the exit without holding the lock, so a timeout can still kill it.
    fn wait(&self) -> ExitStatus {
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut child = self.0.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A command running in the background (e.g. a client the test races against);
/// killed on drop.
pub struct Running {
    child: Tracked,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> Option<std::thread::JoinHandle<Vec<u8>>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

impl Running {
    /// Start `cmd` with its stdout and stderr collected (stdin from /dev/null).
    pub fn spawn(cmd: &mut Command) -> Running {
        super::keys::apply(cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = Tracked::spawn(cmd);
        let (out, err) = {
            let mut c = child.0.lock().unwrap();
            (c.stdout.take(), c.stderr.take())
        };
        Running {
            child,
            stdout: drain(out),
            stderr: drain(err),
        }
    }
    /// Wait for the exit and collect what it printed.
    pub fn output(mut self) -> Output {
        let status = self.child.wait();
        let take = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().unwrap()).unwrap_or_default()
        };
        Output {
            status,
            stdout: take(self.stdout.take()),
            stderr: take(self.stderr.take()),
        }
    }
}

/// `cmd.output()`, with the child killed if the test times out meanwhile.
pub fn output(cmd: &mut Command) -> Output {
    Running::spawn(cmd).output()
}

/// Run the binary and collect its output.
pub fn run(args: &[&str]) -> Output {
    output(Command::new(bin()).args(args))
}

/// A running daemon process; killed on drop.
pub struct Proc {
    child: Tracked,
    pub ready: Value,
    pub log: PathBuf,
    /// Keys of a manager's test deployment (client key, key store).
    pub pki: Option<crate::util::Pki>,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn ep(&self, key: &str) -> String {
        self.ready[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in ready file: {}", self.ready))
            .to_owned()
    }
    /// A secure manager's public key (its CURVE key), from its ready file.
    pub fn manager_key(&self) -> service_mgr::security::PublicKey {
        self.ep("manager_key").parse().unwrap()
    }
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Send a signal and wait for the exit status.
    pub fn signal_and_wait(&mut self, sig: i32, secs: u64) -> ExitStatus {
        // SAFETY: kill(2) on our own unreaped child's pid.
        unsafe { libc::kill(self.pid(), sig) };
        self.wait_exit(secs)
            .expect("daemon did not exit after the signal")
    }
    pub fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().is_none()
    }
}

/// Start `service-mgr ARGS... --ready-file F` and wait until F appears.
pub fn spawn_ready(args: &[&str]) -> Proc {
    spawn_ready_with(args, |_| {})
}

/// As [`spawn_ready`], with `setup` applied to the command first (e.g. [`soft_nofile`]).
pub fn spawn_ready_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let log = dir.path().join("stderr.log");
    let mut cmd = Command::new(bin());
    setup(&mut cmd);
    let child = Tracked::spawn(
        cmd.args(args)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
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
        if let Some(status) = p.child.try_wait() {
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

/// Start the child with this soft limit of open files, as on a host whose
/// default is 1024 (the hard limit stays as it is).
pub fn soft_nofile(cmd: &mut Command, soft: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getrlimit/setrlimit are async-signal-safe and touch only `lim`.
    unsafe {
        cmd.pre_exec(move || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = (soft as libc::rlim_t).min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

/// A field of /proc/PID/status in MiB (`VmRSS`, `VmHWM`: the peak).
pub fn mem_mib(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb / 1024
}

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

fn kill_detached(pid: i32) {
    if pid > 0 && pid_alive(pid) {
        // SAFETY: kill(2) on the pid of a daemon this test started and that still runs.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A process the test started but that is not its child (a detached daemon):
/// SIGKILLed by pid on drop (or when the test times out) if still alive.
pub struct Detached {
    pid: i32,
}

impl Detached {
    pub fn new(pid: i32) -> Detached {
        with_scope(|s| s.detached.lock().unwrap().push(pid));
        Detached { pid }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        kill_detached(self.pid);
    }
}

/// Count the lines of `text` that contain `needle`.
pub fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Regression: a test that timed out left its daemons and clients running
/// (with_timeout abandoned the body's thread, so no Drop ever ran).
#[test]
fn a_timed_out_test_leaves_no_children() {
    let pids = Arc::new(Mutex::new(Vec::new()));
    let seen = pids.clone();
    let timed_out = std::panic::catch_unwind(move || {
        with_timeout(5, move || {
            let mut mgr = crate::util::manager(&[]);
            let sleeper = Running::spawn(Command::new("sleep").arg("60"));
            seen.lock()
                .unwrap()
                .extend([mgr.pid(), sleeper.child.id() as i32]);
            // Hang until the timeout kills the manager.
            mgr.wait_exit(60);
        })
    });
    let msg = timed_out.expect_err("the body should have timed out");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    // The message names what was still running (what the body waited for).
    assert!(
        msg.starts_with("test timed out after 5 s; still running: ")
            && msg.contains("\"daemon\"")
            && msg.contains("\"sleep\" \"60\""),
        "{msg}"
    );
    let pids = pids.lock().unwrap().clone();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        wait_for(5, &format!("pid {pid} to die"), || {
            (!pid_alive(pid)).then_some(())
        });
    }
}

/// The uid and gid of `nobody`, whom tests run as where they run as root.
const NOBODY: u32 = 65534;

/// Run `cmd` as a new user would: HOME is `home` (made if missing), no XDG
/// overrides, and, where the tests run as root (CI), as `nobody` with `home`
/// handed over to it, so that root's defaults (/etc/service-mgr) never apply.
pub fn as_newbie<'a>(cmd: &'a mut Command, home: &Path) -> &'a mut Command {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(home).unwrap();
    cmd.env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("SERVICE_MGR_KEY");
    if unsafe { libc::geteuid() } == 0 {
        // The temp dirs above `home` are root's and 0700: open the way down.
        let mut dir = Some(home);
        while let Some(d) =
            dir.filter(|d| d.starts_with(std::env::temp_dir()) && *d != std::env::temp_dir())
        {
            std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
            dir = d.parent();
        }
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}
