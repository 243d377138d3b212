//! Running the host's service manager for one request: no shell, a timeout
//! that kills the whole process group, and output captured concurrently and
//! capped so that no amount of output can block the agent.

use crate::config::{AgentConfig, ServiceManagerKind};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// How long we wait for stdout/stderr to close after the command exited: a
/// daemon started by `service foo start` may keep them open forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The program that controls services on this host, and its argument order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `service NAME CMD`, also used for a configured `service_command`.
    NameFirst(PathBuf),
    /// `systemctl CMD NAME`.
    Systemctl(PathBuf),
}

impl Backend {
    /// Pick the backend: the configured program, else `service` on PATH, else
    /// `systemctl`, else OpenRC's `rc-service`. `None` if nothing is found.
    pub fn resolve(config: &AgentConfig) -> Option<Backend> {
        if let Some(cmd) = &config.service_command {
            return Some(Backend::NameFirst(cmd.clone()));
        }
        let service = || which("service").map(Backend::NameFirst);
        let systemctl = || which("systemctl").map(Backend::Systemctl);
        let openrc = || which("rc-service").map(Backend::NameFirst);
        match config.service_manager {
            ServiceManagerKind::Auto => service().or_else(systemctl).or_else(openrc),
            ServiceManagerKind::Service => service(),
            ServiceManagerKind::Systemctl => systemctl(),
            ServiceManagerKind::RcService => openrc(),
        }
    }

    pub fn program(&self) -> &Path {
        match self {
            Backend::NameFirst(p) | Backend::Systemctl(p) => p,
        }
    }

    fn command(&self, service: &str, cmd: &str) -> Command {
        let mut c = Command::new(self.program());
        match self {
            Backend::NameFirst(_) => c.args([service, cmd]),
            Backend::Systemctl(_) => c.args(["--no-pager", cmd, service]),
        };
        crate::runtime::child_gets_inherited_nofile(&mut c);
        c
    }
}

/// Find an executable on PATH (and in the sbin directories, which a daemon's PATH may lack).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// How often a running command looks whether it was cancelled.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Set by a stopping agent whose `stop_timeout` ran out: the command's process
/// group is killed and its outcome marked interrupted.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What one run of the service manager produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code, or minus the signal number (as Python's subprocess reports it).
    pub returncode: i64,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// Killed because the agent stopped ([`Cancel`]), not by the timeout.
    pub interrupted: bool,
    /// Whether stdout or stderr was cut at the cap.
    pub truncated: bool,
    pub duration: Duration,
}

/// Run `service cmd` through `backend` and wait at most `timeout`, or until `cancel`.
pub fn run(
    backend: &Backend,
    service: &str,
    cmd: &str,
    timeout: Duration,
    max_output: usize,
    cancel: &Cancel,
) -> std::io::Result<Outcome> {
    let started = Instant::now();
    let mut command = backend.command(service, cmd);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills everything it started.
        .process_group(0);
    let mut child = command.spawn()?;
    let pid = child.id() as i32;
    let out = capture(child.stdout.take().expect("piped"), max_output);
    let err = capture(child.stderr.take().expect("piped"), max_output);
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let deadline = started + timeout;
    let lost = || std::io::Error::other("lost the child's exit status");
    let (status, timed_out, interrupted) = loop {
        let step = deadline
            .saturating_duration_since(Instant::now())
            .min(CANCEL_POLL);
        match done_rx.recv_timeout(step) {
            Ok(status) => break (status?, false, false),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(lost()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let cancelled = cancel.is_cancelled();
                if cancelled || Instant::now() >= deadline {
                    // SAFETY: plain kill(2) on the process group we created.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    let status = done_rx.recv().map_err(|_| lost())??;
                    break (status, !cancelled, cancelled);
                }
            }
        }
    };
    let grace = Instant::now() + OUTPUT_GRACE;
    let (stdout, cut_out) = out.finish(grace);
    let (stderr, cut_err) = err.finish(grace);
    let returncode = status
        .code()
        .map(i64::from)
        .or(status.signal().map(|s| -i64::from(s)))
        .unwrap_or(-1);
    Ok(Outcome {
        returncode,
        stdout,
        stderr,
        timed_out,
        interrupted,
        truncated: cut_out || cut_err,
        duration: started.elapsed(),
    })
}

/// Start `service cmd` in a new session after `delay`, not waiting for it:
/// for commands that stop or restart the agent itself.
pub fn spawn_detached(
    backend: &Backend,
    service: &str,
    cmd: &str,
    delay: Duration,
) -> std::io::Result<()> {
    let mut command = backend.command(service, cmd);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid(2) is async-signal-safe; it detaches the child from our
    // session so that the agent's stop does not take it down.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    thread::spawn(move || {
        thread::sleep(delay);
        if let Ok(mut child) = command.spawn() {
            let _ = child.wait();
        }
    });
    Ok(())
}

/// A reader thread that keeps the first `cap` bytes of a pipe and discards the
/// rest, so the child never blocks on a full pipe.
struct Capture {
    rx: mpsc::Receiver<(Vec<u8>, u64)>,
}

fn capture(mut pipe: impl Read + Send + 'static, cap: usize) -> Capture {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut dropped = 0u64;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&buf[..room]);
                    dropped += (n - room) as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send((kept, dropped));
    });
    Capture { rx }
}

impl Capture {
    /// The captured text (invalid UTF-8 replaced) and whether it was cut.
    fn finish(self, deadline: Instant) -> (String, bool) {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(wait) {
            Ok((bytes, dropped)) => {
                let mut text = String::from_utf8_lossy(&bytes).into_owned();
                if dropped > 0 {
                    text.push_str(&format!(
                        "\n[service-mgr: output truncated, {dropped} more bytes not shown]\n"
                    ));
                }
                (text, dropped > 0)
            }
            // Something the command started still holds the pipe open; we stop reading.
            Err(_) => (
                "[service-mgr: output not closed 2 s after the command exited; not read]\n"
                    .to_owned(),
                true,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, body: &str) -> Backend {
        let path = dir.join("fake-service");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "#!/bin/sh\n{body}").unwrap();
        drop(f);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Backend::NameFirst(path)
    }

    /// `run`, again while the script is "text file busy": another test
    /// thread forking while `script` held it open for writing (its child
    /// inherits the descriptor until it execs).
    fn run_busy_safe(
        b: &Backend,
        service: &str,
        cmd: &str,
        timeout: Duration,
        cap: usize,
        cancel: &Cancel,
    ) -> std::io::Result<Outcome> {
        let mut tries = 0;
        loop {
            match run(b, service, cmd, timeout, cap, cancel) {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    #[test]
    fn passes_name_and_command_as_separate_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let b = script(
            dir.path(),
            r#"printf '%s|%s|' "$1" "$2"; echo err >&2; exit 3"#,
        );
        let o = run_busy_safe(
            &b,
            "a;b",
            "status",
            Duration::from_secs(5),
            1024,
            &Cancel::default(),
        )
        .unwrap();
        assert_eq!(o.stdout, "a;b|status|");
        assert_eq!(o.stderr, "err\n");
        assert_eq!(o.returncode, 3);
        assert!(!o.timed_out && !o.truncated);
    }

    #[test]
    fn large_and_binary_output_is_capped_not_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let b = script(
            dir.path(),
            "head -c 3000000 /dev/zero | tr '\\0' 'x'; printf '\\377\\376' >&2",
        );
        let o = run_busy_safe(
            &b,
            "s",
            "status",
            Duration::from_secs(20),
            1024 * 1024,
            &Cancel::default(),
        )
        .unwrap();
        assert!(o.truncated);
        assert!(o.stdout.starts_with("xxxx"));
        assert!(o.stdout.contains("output truncated, 1951424 more bytes"));
        assert_eq!(o.stderr, "\u{fffd}\u{fffd}");
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let b = script(dir.path(), "sleep 30 & sleep 30");
        let o = run_busy_safe(
            &b,
            "s",
            "start",
            Duration::from_millis(300),
            1024,
            &Cancel::default(),
        )
        .unwrap();
        assert!(o.timed_out && !o.interrupted);
        assert_eq!(o.returncode, -9);
        assert!(o.duration < Duration::from_secs(5));
    }

    #[test]
    fn cancel_kills_the_process_group_and_marks_it_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let b = script(dir.path(), "sleep 30 & sleep 30");
        let cancel = Cancel::default();
        let c = cancel.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            c.cancel();
        });
        let o = run_busy_safe(&b, "s", "start", Duration::from_secs(60), 1024, &cancel).unwrap();
        assert!(o.interrupted && !o.timed_out);
        assert_eq!(o.returncode, -9);
        assert!(o.duration < Duration::from_secs(5));
    }
}
