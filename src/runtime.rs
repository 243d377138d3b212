//! What a long-running role needs from the OS: a shutdown/reload input that
//! signals and tests can both trigger, a locked pid file, detaching, and the
//! link names of the multicall executable.

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Called by a role once its sockets are bound, with the bound endpoints as
/// JSON: writes the ready file, tells a waiting parent that detaching worked.
pub type OnReady<'a> = &'a mut dyn FnMut(&serde_json::Value) -> Result<()>;

/// What SIGHUP runs (reopen the log file).
type ReopenFn = Box<dyn Fn() -> Result<()> + Send>;

/// The loop's side of the shutdown input: a file descriptor to put into
/// `zmq::poll` and the flags that say what woke it.
pub struct Control {
    wake_rx: UnixStream,
    wake_tx: UnixStream,
    term: Arc<AtomicBool>,
    /// SIGTERM/SIGINT received so far.
    signals: Arc<AtomicUsize>,
    /// Whether a second SIGTERM/SIGINT is the loop's to handle (`urgent`)
    /// rather than an immediate exit; a third one always exits at once.
    hurry_on_second: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    reopen: std::sync::Mutex<Option<ReopenFn>>,
}

/// A cloneable trigger for `Control`, for tests, the demo and management
/// commands that stop a role from another thread.
#[derive(Clone)]
pub struct ControlHandle {
    wake_tx: Arc<UnixStream>,
    term: Arc<AtomicBool>,
}

/// What woke the loop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    pub shutdown: bool,
    /// A second SIGTERM/SIGINT, for a role that asked for it
    /// ([`Control::hurry_on_second_signal`]): stop now, not gracefully.
    pub urgent: bool,
    pub reopen_logs: bool,
}

impl Control {
    pub fn new() -> Result<Control> {
        let (wake_rx, wake_tx) =
            UnixStream::pair().context("cannot create the wake-up socket pair")?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        Ok(Control {
            wake_rx,
            wake_tx,
            term: Arc::new(AtomicBool::new(false)),
            signals: Arc::new(AtomicUsize::new(0)),
            hurry_on_second: Arc::new(AtomicBool::new(false)),
            hup: Arc::new(AtomicBool::new(false)),
            reopen: std::sync::Mutex::new(None),
        })
    }

    /// Route SIGTERM/SIGINT (shutdown) and SIGHUP (reopen logs) into this
    /// control. A second SIGTERM/SIGINT while shutting down exits at once
    /// (unless the role asked to [`hurry_on_second_signal`](Self::hurry_on_second_signal)).
    pub fn install_signals(&self) -> Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        use signal_hook::low_level::pipe;
        use signal_hook::{flag, low_level};
        for sig in [SIGTERM, SIGINT] {
            let (term, signals) = (Arc::clone(&self.term), Arc::clone(&self.signals));
            let hurry = Arc::clone(&self.hurry_on_second);
            let action = move || {
                let n = signals.fetch_add(1, Ordering::SeqCst) + 1;
                term.store(true, Ordering::SeqCst);
                if n >= 3 || (n == 2 && !hurry.load(Ordering::SeqCst)) {
                    low_level::exit(1);
                }
            };
            // SAFETY: the action only touches atomics and calls _exit(2),
            // both async-signal-safe.
            unsafe { low_level::register(sig, action) }?;
        }
        flag::register(SIGHUP, Arc::clone(&self.hup))?;
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            pipe::register(sig, self.wake_tx.try_clone()?)?;
        }
        Ok(())
    }

    /// A second SIGTERM/SIGINT wakes the loop with `urgent` instead of
    /// exiting at once, so that the role can say its last words (the agent's
    /// `interrupted` results); a third one still exits at once.
    pub fn hurry_on_second_signal(&self) {
        self.hurry_on_second.store(true, Ordering::SeqCst);
    }

    /// What SIGHUP does (reopen the log file), run by `take` on the loop's thread.
    pub fn on_reopen(&self, f: impl Fn() -> Result<()> + Send + 'static) {
        *self.reopen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    pub fn handle(&self) -> ControlHandle {
        ControlHandle {
            wake_tx: Arc::new(self.wake_tx.try_clone().expect("dup of a socket fd")),
            term: Arc::clone(&self.term),
        }
    }

    /// The descriptor that becomes readable when something happened.
    pub fn fd(&self) -> RawFd {
        self.wake_rx.as_raw_fd()
    }

    /// Empty the wake-up pipe and report what happened since the last call.
    pub fn take(&self) -> Wake {
        let mut buf = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
        let wake = Wake {
            shutdown: self.term.load(Ordering::SeqCst),
            urgent: self.signals.load(Ordering::SeqCst) >= 2,
            reopen_logs: self.hup.swap(false, Ordering::SeqCst),
        };
        if wake.reopen_logs {
            if let Some(f) = &*self.reopen.lock().unwrap_or_else(|p| p.into_inner()) {
                if let Err(e) = f() {
                    // Nowhere better to say it: the log file is what failed.
                    eprintln!("service-mgr: {e:#}");
                }
            }
        }
        wake
    }

    pub fn shutdown_requested(&self) -> bool {
        self.term.load(Ordering::SeqCst)
    }
}

impl ControlHandle {
    /// Ask the loop to shut down as SIGTERM would.
    pub fn shutdown(&self) {
        self.term.store(true, Ordering::SeqCst);
        let _ = (&*self.wake_tx).write(&[1]);
    }
}

/// A pid file held with an exclusive `flock` for the life of the process:
/// a live daemon keeps others out, a stale file (no lock) is taken over.
pub struct PidFile {
    path: PathBuf,
    file: Flock<File>,
}

impl PidFile {
    pub fn acquire(path: &Path, program: &str) -> Result<PidFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create pid file directory {}", dir.display()))?;
        }
        let file = open_pid_file(path)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut f, _)) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                bail!(
                    "{program} is already running as pid {} (pid file {} is locked); stop it first or use another -p",
                    pid.trim(),
                    path.display()
                );
            }
        };
        write_pid(&mut file)?;
        Ok(PidFile {
            path: path.to_owned(),
            file,
        })
    }

    /// Write our (new) pid after detaching.
    pub fn update(&mut self) -> Result<()> {
        write_pid(&mut self.file)
    }
}

/// Open (or create, mode 0644) the pid file without following a symlink or
/// writing through a hard link: someone who can write its directory (a shared
/// /var/run, a -p in /tmp) could otherwise make a daemon started as root
/// truncate and overwrite any file it names.
fn open_pid_file(path: &Path) -> Result<File> {
    let refuse = |why: &str| {
        anyhow::anyhow!(
            "pid file {p} {why}; refusing to write through it (remove {p}, or give -p another path)",
            p = path.display()
        )
    };
    // The same check as O_NOFOLLOW below, for an error that says what is wrong.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(refuse("is a symbolic link"));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        // O_NONBLOCK: a FIFO or device planted there must not hang the start.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // A link planted between the check above and the open.
            Some(libc::ELOOP) => refuse("is a symbolic link"),
            _ => anyhow::Error::new(e).context(format!("cannot open pid file {}", path.display())),
        })?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat pid file {}", path.display()))?;
    if !meta.is_file() {
        return Err(refuse("is not a regular file"));
    }
    if meta.nlink() > 1 {
        return Err(refuse("has other hard links"));
    }
    Ok(file)
}

fn write_pid(file: &mut File) -> Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(())
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The detached child's line back to the parent that is still waiting on the
/// terminal: "ok" once the sockets are bound, or the error that stopped it.
pub struct Detached {
    pipe: Option<File>,
}

impl Detached {
    pub fn ready(&mut self) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(b"ok");
        }
    }

    pub fn failed(&mut self, msg: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(msg.as_bytes());
        }
    }
}

/// Detach from the terminal: fork, setsid, chdir /, stdio to /dev/null.
/// The parent stays until the child calls `ready` (exit 0) or `failed` or
/// dies (the error on stderr, exit 1), so a daemon that cannot bind its
/// ports does not report success to its init script.
/// Must run before any thread or zmq context exists.
pub fn detach(program: &str, logfile: Option<&Path>) -> Result<Detached> {
    use nix::unistd::{fork, setsid, ForkResult};
    let (read_end, write_end) = nix::unistd::pipe().context("cannot create a pipe")?;
    // SAFETY: no other thread exists yet (documented precondition).
    match unsafe { fork() }.context("cannot fork")? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            let mut answer = String::new();
            let _ = File::from(read_end).read_to_string(&mut answer);
            if answer == "ok" {
                std::process::exit(0);
            }
            if answer.is_empty() {
                let log = logfile
                    .map(|l| format!("; see {}", l.display()))
                    .unwrap_or_default();
                answer = format!("the daemon exited while starting{log}");
            }
            eprintln!("{program}: error: {answer}");
            std::process::exit(1);
        }
        ForkResult::Child => {
            drop(read_end);
            setsid().context("setsid failed")?;
            std::env::set_current_dir("/")?;
            let null = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            for fd in 0..=2 {
                // SAFETY: dup2 onto the standard descriptors of this process.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
            Ok(Detached {
                pipe: Some(File::from(write_end)),
            })
        }
    }
}

/// Write the ready document atomically (tests and scripts poll for the file).
/// The temp file is made anew (O_EXCL), so a link planted at its name is not followed.
pub fn write_ready_file(path: &Path, doc: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp); // left by a crash, or planted
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&serde_json::to_vec_pretty(doc)?))
        .and_then(|_| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write ready file {}", path.display()))
}

/// The soft limit of open files this process started with, once
/// [`raise_nofile_limit`] raised it (u64::MAX: not raised).
static INHERITED_NOFILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// Raise the soft limit of open files to the hard limit, for a process that
/// holds thousands of connections (both daemons, a simulated fleet, the
/// benchmark). Returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!(
                "cannot read the open files limit: {}",
                std::io::Error::last_os_error()
            );
        }
        if lim.rlim_cur < lim.rlim_max {
            #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
            let inherited = lim.rlim_cur as u64;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!(
                    "cannot raise the open files limit to {}: {}",
                    lim.rlim_max,
                    std::io::Error::last_os_error()
                );
            }
            let _ = INHERITED_NOFILE.compare_exchange(
                u64::MAX,
                inherited,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    Ok(lim.rlim_cur as u64)
}

/// Give a child the soft limit of open files this process started with, if
/// [`raise_nofile_limit`] raised ours: programs the agent starts (init
/// scripts, daemons) may use select(2), which breaks on descriptors past 1024.
pub fn child_gets_inherited_nofile(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let soft = INHERITED_NOFILE.load(Ordering::SeqCst);
    if soft == u64::MAX {
        return;
    }
    // SAFETY: getrlimit/setrlimit are async-signal-safe and touch only `lim`.
    unsafe {
        cmd.pre_exec(move || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur = (soft as libc::rlim_t).min(lim.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            Ok(())
        })
    };
}

/// For a daemon that spends its life idle with a few light threads (the
/// agent): one malloc arena for every thread. glibc otherwise gives each
/// thread that allocates (libzmq's I/O thread, each request's threads) an
/// arena of its own, which keeps its pages (about 0.1 MiB of an idle agent).
/// Call before any thread exists.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Give back to the system the heap that was used and freed: start-up's
/// (the command line, the config, the policy's globs), called once a role is
/// ready, so an idle daemon does not hold it; and the manager's, now and then.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Create links named `names` in `dir`, each pointing at this executable
/// (busybox style: the name a link is called by says which program runs).
pub fn install_links(dir: &Path, names: &[&str]) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in names {
        let link = dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&link)?,
            Ok(_) => bail!(
                "{} exists and is not a link; remove it first",
                link.display()
            ),
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&exe, &link)
            .with_context(|| format!("cannot create link {}", link.display()))?;
        println!("{} -> {}", link.display(), exe.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// build.rs links the unwinder statically (libgcc_eh for libgcc_s): a
    /// panic must still unwind and be caught (the job store relies on it).
    #[test]
    fn panics_unwind_with_the_static_unwinder() {
        let caught = std::panic::catch_unwind(|| -> u32 { panic!("on purpose") });
        assert!(caught.is_err());
    }

    #[test]
    fn handle_wakes_and_requests_shutdown() {
        let c = Control::new().unwrap();
        assert_eq!(c.take(), Wake::default());
        c.handle().shutdown();
        let mut item = [zmq::PollItem::from_fd(c.fd(), zmq::POLLIN)];
        assert_eq!(zmq::poll(&mut item, 1000).unwrap(), 1);
        assert!(c.take().shutdown);
    }

    #[test]
    fn pid_file_refuses_a_second_holder_and_takes_over_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/x.pid");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "999999\n").unwrap(); // stale: nobody holds the lock
        let held = PidFile::acquire(&path, "service-mgrd").unwrap();
        let pid: u32 = std::fs::read_to_string(&path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, std::process::id());
        let err = PidFile::acquire(&path, "service-mgrd")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("already running"), "{err}");
        drop(held);
        assert!(!path.exists());
    }

    /// Raising the daemons' limit must not hand services the agent starts a
    /// soft limit past 1024 (select(2) breaks there).
    #[test]
    fn children_get_the_open_files_limit_we_started_with() {
        let soft = |cmd: &mut std::process::Command| {
            let out = cmd.args(["-c", "ulimit -Sn"]).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let before = soft(&mut std::process::Command::new("sh"));
        let mut cmd = std::process::Command::new("sh");
        child_gets_inherited_nofile(&mut cmd);
        assert_eq!(soft(&mut cmd), before, "not raised: left alone");
        INHERITED_NOFILE.store(1000, Ordering::SeqCst);
        let mut cmd = std::process::Command::new("sh");
        child_gets_inherited_nofile(&mut cmd);
        INHERITED_NOFILE.store(u64::MAX, Ordering::SeqCst);
        assert_eq!(soft(&mut cmd), "1000");
    }

    /// A pid path planted as a symlink (or a hard link) to another file made
    /// the daemon truncate and overwrite that file.
    #[test]
    fn pid_file_is_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let link = dir.path().join("x.pid");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = format!(
            "{:#}",
            PidFile::acquire(&link, "service-mgrd").err().unwrap()
        );
        assert!(
            err.contains(&format!("pid file {} is a symbolic link", link.display())),
            "{err}"
        );
        let dangling = dir.path().join("y.pid");
        std::os::unix::fs::symlink(dir.path().join("new-file"), &dangling).unwrap();
        assert!(PidFile::acquire(&dangling, "service-mgrd").is_err());
        assert!(!dir.path().join("new-file").exists());
        let hard = dir.path().join("z.pid");
        std::fs::hard_link(&victim, &hard).unwrap();
        let err = format!(
            "{:#}",
            PidFile::acquire(&hard, "service-mgrd").err().unwrap()
        );
        assert!(err.contains("has other hard links"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    }
}
