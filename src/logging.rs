//! The slog root: plain text lines to stderr or to a log file that SIGHUP reopens.

use anyhow::{Context, Result};
use slog::{o, Drain, Level, Logger};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where log lines go; the daemon's loop calls `reopen` after SIGHUP so that
/// logrotate can move the file away.
#[derive(Clone)]
pub struct LogTarget {
    inner: Arc<Mutex<Sink>>,
}

enum Sink {
    Stderr,
    File { path: PathBuf, file: File },
}

impl LogTarget {
    pub fn stderr() -> Self {
        LogTarget {
            inner: Arc::new(Mutex::new(Sink::Stderr)),
        }
    }

    /// Log to `path`, creating its directory (0.1 used /var/log/service-mgr/).
    pub fn file(path: &Path) -> Result<Self> {
        let file = open_log(path)?;
        Ok(LogTarget {
            inner: Arc::new(Mutex::new(Sink::File {
                path: path.to_owned(),
                file,
            })),
        })
    }

    /// Reopen the log file at its path (no-op for stderr).
    pub fn reopen(&self) -> Result<()> {
        let mut sink = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Sink::File { path, file } = &mut *sink {
            *file = open_log(path)?;
        }
        Ok(())
    }
}

fn open_log(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create log directory {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))
}

impl Write for LogTarget {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.inner.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::Stderr => io::stderr().write(buf),
            Sink::File { file, .. } => file.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.inner.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::Stderr => io::stderr().flush(),
            Sink::File { file, .. } => file.flush(),
        }
    }
}

/// Build the root logger for a role. `debug` lowers the level to Debug; the
/// crate is built with `release_max_level_trace` so this works in release builds.
pub fn root(target: LogTarget, role: &'static str, debug: bool) -> Logger {
    let decorator = slog_term::PlainSyncDecorator::new(target);
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let level = if debug { Level::Debug } else { Level::Info };
    let drain = slog::LevelFilter::new(drain, level).fuse();
    Logger::root(drain, o!("role" => role, "pid" => std::process::id()))
}

/// The logger of a command that is not a daemon (client, demo): debug output
/// on stderr with `-D`, else nothing.
pub fn debug_or_quiet(debug: bool, role: &'static str) -> Logger {
    match debug {
        true => root(LogTarget::stderr(), role, true),
        false => discard(),
    }
}

/// A logger that drops everything, for tests and quiet helpers.
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
