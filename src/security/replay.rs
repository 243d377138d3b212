//! The replay guard: refuses stale, future-dated and repeated requests within
//! bounded memory, and remembers what it accepted across restarts.
//!
//! Why a journal on disk (and not "refuse what was signed before we started"):
//! refusing by start time needs the signer's clock to agree with ours to the
//! millisecond, or tolerates skew and lets a request signed just before a
//! restart through. It would also refuse a client's own retry of a request
//! that was in flight when the daemon restarted, and an agent's presence
//! subscription that libzmq sends again on reconnecting. A journal of the ids
//! accepted within the window has none of these costs: a restart (or a crash)
//! changes nothing about what counts as a replay.
//!
//! The journal is one line per id, `<expiry ms> <id as a JSON string>`,
//! appended (and written to the kernel) before the caller acts, so that a
//! crash of the process loses nothing. It is not fsynced per id: a power loss
//! may lose the last seconds of ids (the kernel's write-back). It is read at
//! start, expired lines dropped, damaged lines (a torn last line after a
//! crash, garbage) skipped and counted, never a panic, and rewritten compact
//! whenever it holds twice the live ids.

use super::{malformed, AuthError};
use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest request id the [`ReplayGuard`] remembers: bounds its memory per entry.
pub const MAX_REQUEST_ID: usize = 128;

/// Lines a journal may hold before it is compacted, at least.
const COMPACT_MIN: usize = 4096;

/// Refuses stale and repeated requests. Call it only after the signature
/// verified, so that strangers cannot fill it.
///
/// An id is remembered until its timestamp leaves the window (after which the
/// request would be refused as expired anyway). Memory is bounded by
/// `capacity` ids of at most [`MAX_REQUEST_ID`] bytes; when full it refuses
/// new requests rather than forget an id still inside the window, since
/// forgetting would let a replay through (fail closed: at worst clients retry).
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    seen: HashSet<String>,
    /// (last instant the id can be fresh, id), oldest first.
    by_expiry: BTreeSet<(u64, String)>,
    /// Where accepted ids are written before they are acted on (None: memory only).
    journal: Option<Journal>,
}

#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: File,
    /// Lines in the file now (live or expired).
    lines: usize,
}

/// What [`ReplayGuard::open`] found in its journal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JournalLoad {
    /// Ids still inside the window, remembered again.
    pub live: usize,
    /// Lines that could not be read (a torn last line after a crash, damage).
    pub damaged: usize,
}

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the replay journal {}: {source}", path.display())]
pub struct JournalError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl ReplayGuard {
    /// A guard in memory only: what it accepted is forgotten when the process ends.
    pub fn new(window: Duration, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            capacity,
            seen: HashSet::new(),
            by_expiry: BTreeSet::new(),
            journal: None,
        }
    }

    /// A guard that remembers across restarts through the journal at `path`
    /// (created if missing, mode 0600): the ids it holds are refused again.
    pub fn open(
        path: &Path,
        window: Duration,
        capacity: usize,
        now_ms: u64,
    ) -> Result<(ReplayGuard, JournalLoad), JournalError> {
        let err = |source| JournalError {
            path: path.to_owned(),
            source,
        };
        let mut g = ReplayGuard::new(window, capacity);
        let mut load = JournalLoad::default();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(err(e)),
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match parse_line(line) {
                Some((expiry, _)) if expiry < now_ms => {}
                Some((_, id)) if g.seen.contains(&id) => {}
                Some((expiry, id)) if g.seen.len() < capacity => {
                    g.seen.insert(id.clone());
                    g.by_expiry.insert((expiry, id));
                }
                Some(_) => {}
                None => load.damaged += 1,
            }
        }
        load.live = g.seen.len();
        g.journal = Some(Journal {
            path: path.to_owned(),
            file: rewrite(path, &g.by_expiry).map_err(err)?,
            lines: g.seen.len(),
        });
        Ok((g, load))
    }

    /// Accept request `id` dated `ts_unix_ms` once, if within the window of `now_ms`.
    pub fn check(&mut self, id: &str, ts_unix_ms: u64, now_ms: u64) -> Result<(), AuthError> {
        if id.is_empty() || id.len() > MAX_REQUEST_ID {
            return Err(malformed(format!(
                "request id must be 1 to {MAX_REQUEST_ID} bytes"
            )));
        }
        let window_ms = self.window_ms;
        if now_ms > ts_unix_ms && now_ms - ts_unix_ms > window_ms {
            return Err(AuthError::Expired {
                age_ms: now_ms - ts_unix_ms,
                window_ms,
            });
        }
        if ts_unix_ms > now_ms && ts_unix_ms - now_ms > window_ms {
            return Err(AuthError::FromTheFuture {
                ahead_ms: ts_unix_ms - now_ms,
                window_ms,
            });
        }
        if self.seen(id, now_ms) {
            return Err(AuthError::Replayed(id.to_owned()));
        }
        let expiry = ts_unix_ms.saturating_add(window_ms);
        if let Err(e) = self.remember(id, expiry, now_ms) {
            // Not on disk: it could run again after a restart, so it does not run now.
            self.forget(id, expiry);
            return Err(e);
        }
        Ok(())
    }

    /// Whether `id` is remembered (and not yet expired at `now_ms`).
    pub fn seen(&mut self, id: &str, now_ms: u64) -> bool {
        self.forget_expired(now_ms);
        self.seen.contains(id)
    }

    /// Remember `id` until `expiry_ms`, on disk too when journaled. On a
    /// journal error the id stays remembered in memory and the error says why.
    pub fn remember(&mut self, id: &str, expiry_ms: u64, now_ms: u64) -> Result<(), AuthError> {
        self.forget_expired(now_ms);
        if self.seen.contains(id) {
            return Ok(());
        }
        if self.seen.len() >= self.capacity {
            return Err(AuthError::ReplayCacheFull(self.capacity));
        }
        self.seen.insert(id.to_owned());
        self.by_expiry.insert((expiry_ms, id.to_owned()));
        let live = self.seen.len();
        let Some(j) = self.journal.as_mut() else {
            return Ok(());
        };
        let written = if j.lines >= COMPACT_MIN.max(2 * live) {
            rewrite(&j.path, &self.by_expiry).map(|file| {
                j.file = file;
                j.lines = live;
            })
        } else {
            j.file
                .write_all(&line(expiry_ms, id))
                .map(|()| j.lines += 1)
        };
        written.map_err(|e| AuthError::NotRecorded {
            file: j.path.display().to_string(),
            error: e.to_string(),
        })
    }

    fn forget(&mut self, id: &str, expiry_ms: u64) {
        self.seen.remove(id);
        self.by_expiry.remove(&(expiry_ms, id.to_owned()));
    }

    fn forget_expired(&mut self, now_ms: u64) {
        while let Some((expiry, _)) = self.by_expiry.first() {
            if *expiry >= now_ms {
                break;
            }
            if let Some((_, id)) = self.by_expiry.pop_first() {
                self.seen.remove(&id);
            }
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

fn line(expiry_ms: u64, id: &str) -> Vec<u8> {
    let mut l = format!("{expiry_ms} ").into_bytes();
    // A JSON string: an id may hold any character, a line never a newline.
    l.extend_from_slice(serde_json::to_string(id).unwrap_or_default().as_bytes());
    l.push(b'\n');
    l
}

fn parse_line(l: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(l).ok()?;
    let (expiry, id) = text.split_once(' ')?;
    let id: String = serde_json::from_str(id).ok()?;
    (!id.is_empty() && id.len() <= MAX_REQUEST_ID).then_some(())?;
    Some((expiry.parse().ok()?, id))
}

/// Write `entries` to a new file beside `path` and rename it over: a crash
/// leaves the old journal or the new one, whole. Returns it open for appending.
fn rewrite(path: &Path, entries: &BTreeSet<(u64, String)>) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut buf = Vec::with_capacity(entries.len() * 64);
    for (expiry, id) in entries {
        buf.extend_from_slice(&line(*expiry, id));
    }
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn replay_guard_refuses_stale_future_and_repeated() {
        let mut g = ReplayGuard::new(Duration::from_secs(60), 100);
        let now = 1_000_000;
        g.check("a", now, now).unwrap();
        assert_eq!(
            g.check("a", now, now + 1),
            Err(AuthError::Replayed("a".into()))
        );
        g.check("edge-old", now - 60_000, now).unwrap();
        g.check("edge-new", now + 60_000, now).unwrap();
        let err = g.check("old", now - 60_001, now).unwrap_err();
        assert_eq!(
            err,
            AuthError::Expired {
                age_ms: 60_001,
                window_ms: 60_000
            }
        );
        assert!(err.to_string().contains("expired"));
        let err = g.check("new", now + 60_001, now).unwrap_err();
        assert!(matches!(
            err,
            AuthError::FromTheFuture {
                ahead_ms: 60_001,
                ..
            }
        ));
        assert!(err.to_string().contains("from the future"));
        assert!(matches!(
            g.check("", now, now),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            g.check(&"x".repeat(129), now, now),
            Err(AuthError::Malformed(_))
        ));
        // A replay after the window is refused as expired, so the id can go.
        assert_eq!(g.len(), 3);
        assert!(matches!(
            g.check("a", now, now + 60_001),
            Err(AuthError::Expired { .. })
        ));
        g.check("b", now + 60_001, now + 60_001).unwrap();
        assert_eq!(g.len(), 2); // "a" and "edge-old" forgotten, "edge-new" and "b" kept
    }

    #[test]
    fn replay_guard_memory_is_bounded() {
        let mut g = ReplayGuard::new(Duration::from_millis(100), 3);
        for id in ["1", "2", "3"] {
            g.check(id, 1000, 1000).unwrap();
        }
        assert_eq!(g.check("4", 1000, 1050), Err(AuthError::ReplayCacheFull(3)));
        assert_eq!(g.len(), 3);
        // Once the remembered ids are too old to replay, there is room again.
        g.check("4", 1101, 1101).unwrap();
        assert_eq!(g.len(), 1);
        assert!(!g.is_empty());
    }

    #[test]
    fn journal_keeps_replays_refused_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.journal");
        let now = 1_000_000;
        let window = Duration::from_secs(60);
        let (mut g, load) = ReplayGuard::open(&path, window, 100, now).unwrap();
        assert_eq!(load, JournalLoad::default());
        g.check("a", now, now).unwrap();
        g.check("odd \"id\"\nwith a newline", now, now).unwrap();
        g.check("old", now - 59_000, now).unwrap();
        assert_eq!(crate::security::testing::mode(&path), 0o600);
        drop(g);
        // Restarted 2 s later: the ids are still refused; "old" has expired
        // (and would be refused as such).
        let later = now + 2_000;
        let (mut g, load) = ReplayGuard::open(&path, window, 100, later).unwrap();
        assert_eq!(load.live, 2);
        assert_eq!(
            g.check("a", now, later),
            Err(AuthError::Replayed("a".into()))
        );
        assert!(matches!(
            g.check("odd \"id\"\nwith a newline", now, later),
            Err(AuthError::Replayed(_))
        ));
        g.check("b", later, later).unwrap();
    }

    #[test]
    fn damaged_journal_is_read_as_far_as_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.journal");
        let now = 1_000_000;
        let mut text = line(now + 60_000, "a");
        text.extend_from_slice(b"garbage\n\xff\xfe 12\n99 \"\"\n-1 \"x\"\n");
        text.extend_from_slice(&line(now + 60_000, "b"));
        text.extend_from_slice(b"1060000 \"torn"); // a crash mid-line
        std::fs::write(&path, &text).unwrap();
        let (mut g, load) = ReplayGuard::open(&path, Duration::from_secs(60), 100, now).unwrap();
        assert_eq!(
            load,
            JournalLoad {
                live: 2,
                damaged: 5
            }
        );
        assert!(g.check("a", now, now).is_err());
        assert!(g.check("b", now, now).is_err());
        // Rewritten clean: nothing damaged is left for the next start.
        drop(g);
        let (_, load) = ReplayGuard::open(&path, Duration::from_secs(60), 100, now).unwrap();
        assert_eq!(load.damaged, 0);
        // A directory where the journal should be is an error, not a panic.
        let bad = dir.path().join("dir");
        std::fs::create_dir(&bad).unwrap();
        let err = ReplayGuard::open(&bad, Duration::from_secs(60), 100, now).unwrap_err();
        assert!(err.to_string().contains("replay journal"), "{err}");
    }

    #[test]
    fn journal_is_compacted_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.journal");
        let (mut g, _) = ReplayGuard::open(&path, Duration::from_millis(10), 100, 0).unwrap();
        for i in 0..3 * COMPACT_MIN as u64 {
            g.check(&i.to_string(), i, i).unwrap();
        }
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= COMPACT_MIN + 1, "{lines}");
    }

    #[test]
    fn unwritable_journal_refuses_instead_of_forgetting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.journal");
        let (mut g, _) = ReplayGuard::open(&path, Duration::from_secs(60), 10, 0).unwrap();
        // A journal that cannot take more (a full disk, say).
        g.journal.as_mut().unwrap().file = File::open("/dev/null").unwrap();
        let err = g.check("a", 0, 0).unwrap_err();
        assert_eq!(err.reason(), "journal");
        assert!(err.to_string().contains("replay.journal"), "{err}");
        assert!(g.is_empty());
    }
}
