//! The agent's outbox: each result sent to a manager that acknowledges
//! (ours, on CURVE) is kept until the manager says its job store holds it
//! ([`crate::protocol::Ack`]), sent again when a manager welcomes the agent and
//! on a backoff, and journaled beside the agent's key (`<key_file>.outbox`)
//! so that a restarted agent still delivers it. At least once: the manager
//! and the client keep one result per job and node.
//!
//! The journal is a line per change: `A <added_ms> <uuid> <frame>` when a
//! result is added (frames are compact JSON, never a newline), `D <uuid>`
//! when it is acknowledged or dropped. It is rewritten with only the results
//! still kept when it grows past twice their size. Written without fsync: it
//! survives the agent's restart or crash, not the machine's.
//!
//! Bounded: [`MAX_RESULTS`] results, [`MAX_BYTES`] bytes, each kept at most
//! [`MAX_AGE`]; beyond, the oldest go, each said in the log and counted.

use slog::{debug, error, info, warn, Logger};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most results kept unacknowledged.
pub const MAX_RESULTS: usize = 10_000;
/// Most bytes of results kept unacknowledged.
pub const MAX_BYTES: usize = 64 << 20;
/// How long a result is kept unacknowledged (a manager that never acknowledges
/// it: an earlier release, or one that refuses it).
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The first resend of an unacknowledged result; doubled at each try, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// A welcome resends what was sent longer ago than this (what was sent just
/// before is most likely on its way, or already acknowledged).
const WELCOME_RESEND_AFTER: Duration = Duration::from_secs(1);
/// A journal bigger than this is not read (it cannot be one of ours).
const JOURNAL_READ_MAX: u64 = 4 * MAX_BYTES as u64;

/// Where the agent whose key is `key_file` keeps its unacknowledged results.
pub fn journal_path(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".outbox");
    PathBuf::from(name)
}

struct Entry {
    uuid: String,
    frame: Vec<u8>,
    /// Wall clock (ms) when it was first sent: ages survive a restart.
    added_ms: u64,
    last_sent: Option<Instant>,
    tries: u32,
}

impl Entry {
    fn due(&self, now: Instant) -> bool {
        self.last_sent
            .is_none_or(|t| now.duration_since(t) >= backoff(self.tries))
    }
}

fn backoff(tries: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// The unacknowledged results, oldest first.
pub struct Outbox {
    entries: BTreeMap<u64, Entry>,
    by_uuid: HashMap<String, Vec<u64>>,
    next: u64,
    bytes: usize,
    /// Results dropped unacknowledged (bounds or age) since the agent started.
    dropped: u64,
    path: PathBuf,
    /// `None` when the journal cannot be written: the outbox is then kept in memory only.
    journal: Option<File>,
    journal_bytes: u64,
    log: Logger,
}

impl Outbox {
    /// The outbox journaled at `path`, with what a previous run left there.
    /// Never fails: a damaged journal is set aside (`<path>.damaged-<unix
    /// time>`) keeping what could be read, an unwritable one leaves the outbox
    /// in memory; both are logged.
    pub fn open(path: &Path, log: &Logger) -> Outbox {
        let mut outbox = Outbox {
            entries: BTreeMap::new(),
            by_uuid: HashMap::new(),
            next: 0,
            bytes: 0,
            dropped: 0,
            path: path.to_owned(),
            journal: None,
            journal_bytes: 0,
            log: log.clone(),
        };
        let damaged = outbox.load();
        if let Some(why) = damaged {
            let aside = damaged_path(path);
            match std::fs::rename(path, &aside) {
                Ok(()) => {
                    error!(log, "outbox journal damaged: set aside; its readable results are kept";
                    "why" => &why, "moved_to" => %aside.display(), "kept" => outbox.entries.len())
                }
                Err(e) => {
                    error!(log, "outbox journal damaged and cannot be set aside; rewriting it";
                    "why" => &why, "error" => %e, "kept" => outbox.entries.len())
                }
            }
        }
        outbox.rewrite();
        if !outbox.entries.is_empty() {
            info!(log, "unacknowledged results from before the restart; sent again once the manager admits us";
                "results" => outbox.entries.len(), "journal" => %path.display());
        }
        outbox
    }

    /// Read the journal; `Some(why)` if it is damaged (what could be read is kept).
    fn load(&mut self) -> Option<String> {
        let size = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some(format!("cannot read it: {e}")),
        };
        if size > JOURNAL_READ_MAX {
            return Some(format!("{size} bytes, over {JOURNAL_READ_MAX}"));
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => return Some(format!("cannot read it: {e}")),
        };
        let mut bad = 0usize;
        let mut lines = bytes.split(|b| *b == b'\n').peekable();
        while let Some(line) = lines.next() {
            let last = lines.peek().is_none();
            if last && line.is_empty() {
                break;
            }
            if last {
                // Cut short by a crash mid-write: only that result is lost.
                warn!(
                    self.log,
                    "outbox journal ends in a partial line (the agent stopped mid-write); ignored"
                );
                break;
            }
            if !self.replay(line) {
                bad += 1;
            }
        }
        (bad > 0).then(|| format!("{bad} unreadable lines"))
    }

    /// Apply one journal line; false if it is not one.
    fn replay(&mut self, line: &[u8]) -> bool {
        let mut parts = line.splitn(4, |b| *b == b' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(b"A"), Some(ms), Some(uuid), Some(frame)) => {
                let (Some(ms), Some(uuid)) = (
                    std::str::from_utf8(ms).ok().and_then(|s| s.parse().ok()),
                    valid_uuid(uuid),
                ) else {
                    return false;
                };
                if frame.is_empty() {
                    return false;
                }
                self.insert(uuid, frame.to_vec(), ms);
                true
            }
            (Some(b"D"), Some(uuid), None, None) => match valid_uuid(uuid) {
                Some(uuid) => {
                    self.remove(&uuid);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    fn insert(&mut self, uuid: String, frame: Vec<u8>, added_ms: u64) {
        let seq = self.next;
        self.next += 1;
        self.bytes += frame.len();
        self.by_uuid.entry(uuid.clone()).or_default().push(seq);
        self.entries.insert(
            seq,
            Entry {
                uuid,
                frame,
                added_ms,
                last_sent: None,
                tries: 0,
            },
        );
    }

    /// Remove every result of `uuid`; how many there were.
    fn remove(&mut self, uuid: &str) -> usize {
        let Some(seqs) = self.by_uuid.remove(uuid) else {
            return 0;
        };
        for seq in &seqs {
            if let Some(e) = self.entries.remove(seq) {
                self.bytes -= e.frame.len();
            }
        }
        seqs.len()
    }

    /// Keep a result that is being sent now.
    pub fn add(&mut self, uuid: &str, frame: &[u8]) {
        let Some(uuid) = valid_uuid(uuid.as_bytes()) else {
            // Never ours (a request's uuid is checked); sent, not kept.
            warn!(self.log, "result not kept for acknowledgement: its job id is not usable in the outbox"; "uuid" => uuid);
            return;
        };
        let now_ms = crate::clock::now_ms();
        if frame.contains(&b'\n') {
            warn!(self.log, "result kept in memory only: its frame holds a newline"; "uuid" => &uuid);
        } else {
            let mut line = format!("A {now_ms} {uuid} ").into_bytes();
            line.extend_from_slice(frame);
            line.push(b'\n');
            self.append(&line);
        }
        self.insert(uuid, frame.to_vec(), now_ms);
        if let Some(e) = self.entries.values_mut().next_back() {
            e.last_sent = Some(Instant::now());
            e.tries = 1;
        }
        self.enforce_bounds();
    }

    /// The manager stored these jobs' results: forget them. Returns how many were kept.
    pub fn ack(&mut self, uuids: &[String]) -> usize {
        let mut n = 0;
        for uuid in uuids {
            let removed = self.remove(uuid);
            if removed > 0 {
                n += removed;
                self.append(format!("D {uuid}\n").as_bytes());
            }
        }
        if n > 0 {
            self.compact_if_due();
        }
        n
    }

    /// Send again what is due: with `welcomed`, everything not sent in the
    /// last moment (a manager, maybe a restarted one, admitted us); else what
    /// its backoff says. `send` returns false when the socket takes no more
    /// (tried again later). Drops what is older than [`MAX_AGE`] first.
    pub fn resend(&mut self, welcomed: bool, mut send: impl FnMut(&str, &[u8]) -> Resent) -> usize {
        self.expire();
        let now = Instant::now();
        let mut sent = 0;
        for e in self.entries.values_mut() {
            let due = if welcomed {
                e.last_sent
                    .is_none_or(|t| now.duration_since(t) >= WELCOME_RESEND_AFTER)
            } else {
                e.due(now)
            };
            if !due {
                continue;
            }
            match send(&e.uuid, &e.frame) {
                Resent::Sent => {}
                Resent::NotHere => continue,
                Resent::Full => break,
            }
            e.last_sent = Some(now);
            e.tries = e.tries.saturating_add(1);
            sent += 1;
        }
        if sent > 0 {
            debug!(self.log, "unacknowledged results sent again"; "results" => sent, "kept" => self.entries.len());
        }
        sent
    }

    /// The results kept for job `uuid`, as sent.
    pub fn frames_of(&self, uuid: &str) -> Vec<&[u8]> {
        self.by_uuid.get(uuid).map_or_else(Vec::new, |seqs| {
            seqs.iter()
                .filter_map(|s| self.entries.get(s))
                .map(|e| e.frame.as_slice())
                .collect()
        })
    }

    pub fn contains(&self, uuid: &str) -> bool {
        self.by_uuid.contains_key(uuid)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Results dropped unacknowledged since the agent started.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn expire(&mut self) {
        let cutoff = crate::clock::now_ms().saturating_sub(MAX_AGE.as_millis() as u64);
        while let Some((_, e)) = self.entries.first_key_value() {
            if e.added_ms >= cutoff {
                break;
            }
            self.drop_oldest("unacknowledged for longer than the outbox keeps results (24 h)");
        }
    }

    fn enforce_bounds(&mut self) {
        while self.entries.len() > MAX_RESULTS || self.bytes > MAX_BYTES {
            self.drop_oldest("the outbox is full (10,000 results or 64 MiB unacknowledged)");
        }
    }

    /// Drop the oldest result unacknowledged, loudly: it may never have reached the manager.
    fn drop_oldest(&mut self, why: &str) {
        let Some((_, e)) = self.entries.pop_first() else {
            return;
        };
        self.bytes -= e.frame.len();
        if let Some(seqs) = self.by_uuid.get_mut(&e.uuid) {
            seqs.retain(|s| self.entries.contains_key(s));
            if seqs.is_empty() {
                self.by_uuid.remove(&e.uuid);
                self.append(format!("D {}\n", e.uuid).as_bytes());
            }
        }
        self.dropped += 1;
        error!(self.log, "result dropped unacknowledged: the manager may not have it";
            "uuid" => &e.uuid, "why" => why, "dropped_total" => self.dropped,
            "kept" => self.entries.len());
    }

    fn append(&mut self, line: &[u8]) {
        let Some(file) = &mut self.journal else {
            return;
        };
        match file.write_all(line) {
            Ok(()) => self.journal_bytes += line.len() as u64,
            Err(e) => {
                error!(self.log, "cannot write the outbox journal; unacknowledged results are kept in memory only";
                    "journal" => %self.path.display(), "error" => %e);
                self.journal = None;
            }
        }
    }

    fn compact_if_due(&mut self) {
        if self.journal.is_some()
            && (self.entries.is_empty() && self.journal_bytes > 0
                || self.journal_bytes > 2 * self.bytes as u64 + (1 << 20))
        {
            self.rewrite();
        }
    }

    /// Write the journal anew with what is kept (a temporary file renamed over it).
    fn rewrite(&mut self) {
        let tmp = self.path.with_extension("outbox.tmp");
        let written = (|| {
            let mut f = create_private(&tmp)?;
            let mut n = 0u64;
            for e in self.entries.values().filter(|e| !e.frame.contains(&b'\n')) {
                let mut line = format!("A {} {} ", e.added_ms, e.uuid).into_bytes();
                line.extend_from_slice(&e.frame);
                line.push(b'\n');
                f.write_all(&line)?;
                n += line.len() as u64;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            let f = OpenOptions::new().append(true).open(&self.path)?;
            Ok::<_, std::io::Error>((f, n))
        })();
        match written {
            Ok((f, n)) => {
                self.journal = Some(f);
                self.journal_bytes = n;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if self.journal.is_some() || self.journal_bytes == 0 {
                    error!(self.log, "cannot write the outbox journal; unacknowledged results are kept in memory only \
                        (they are lost if the agent restarts): check the key file's directory";
                        "journal" => %self.path.display(), "error" => %e);
                }
                self.journal = None;
            }
        }
    }
}

/// What became of one result [`Outbox::resend`] offered.
pub enum Resent {
    Sent,
    /// Not for the manager(s) being sent to now: still due.
    NotHere,
    /// The socket takes no more: the rest waits for the next round.
    Full,
}

/// A job id as the outbox keeps it: printable, no blanks (a line separator).
fn valid_uuid(bytes: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(bytes).ok()?;
    (!s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic()))
        .then(|| s.to_owned())
}

fn damaged_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{secs}"));
    PathBuf::from(name)
}

/// The journal holds results (command output): readable by the agent's user only.
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    fn sent_all(o: &mut Outbox, welcomed: bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        o.resend(welcomed, |_, f| {
            out.push(f.to_vec());
            Resent::Sent
        });
        out
    }

    #[test]
    fn results_are_kept_until_acked_and_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key.outbox");
        let mut o = Outbox::open(&path, &log());
        o.add("u1", br#"{"uuid":"u1"}"#);
        o.add("u2", br#"{"uuid":"u2"}"#);
        o.add("u3", br#"{"uuid":"u3"}"#);
        assert_eq!(o.ack(&["u2".into(), "nope".into()]), 1);
        // Just sent: neither a welcome nor the backoff sends them again yet.
        assert!(sent_all(&mut o, true).is_empty());
        assert!(sent_all(&mut o, false).is_empty());
        drop(o);
        let mut again = Outbox::open(&path, &log());
        assert_eq!(again.len(), 2);
        assert_eq!(
            sent_all(&mut again, true),
            vec![br#"{"uuid":"u1"}"#.to_vec(), br#"{"uuid":"u3"}"#.to_vec()]
        );
        again.ack(&["u1".into(), "u3".into()]);
        assert!(again.is_empty());
        // Emptied: the journal is rewritten empty.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0);
    }

    #[test]
    fn a_damaged_journal_is_set_aside_keeping_what_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key.outbox");
        std::fs::write(
            &path,
            b"A 1764294000000 u1 {\"uuid\":\"u1\"}\n\xff\xfe garbage\nD\nA x u2 {}\nA 1764294000000 u3 {\"uuid\":\"u3\"}\nA 17642",
        )
        .unwrap();
        let mut o = Outbox::open(&path, &log());
        assert_eq!(o.len(), 2);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        // The rewritten journal reads cleanly.
        drop(o);
        o = Outbox::open(&path, &log());
        assert_eq!(o.len(), 2);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".damaged-")
            })
            .count();
        assert_eq!(aside, 1);
    }

    #[test]
    fn old_results_and_overflow_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.outbox");
        let old = crate::clock::now_ms() - MAX_AGE.as_millis() as u64 - 1000;
        std::fs::write(&path, format!("A {old} u0 {{}}\n")).unwrap();
        let mut o = Outbox::open(&path, &log());
        assert_eq!(o.len(), 1);
        assert!(sent_all(&mut o, true).is_empty());
        assert_eq!((o.len(), o.dropped()), (0, 1));
        for i in 0..MAX_RESULTS + 3 {
            o.add(&format!("u{i}"), b"{}");
        }
        assert_eq!((o.len(), o.dropped()), (MAX_RESULTS, 4));
        assert_eq!(o.ack(&["u2".into()]), 0, "the oldest went first");
        assert_eq!(o.ack(&["u3".into()]), 1);
    }

    #[test]
    fn resends_back_off() {
        assert_eq!(backoff(1), RETRY_FIRST);
        assert_eq!(backoff(2), RETRY_FIRST * 2);
        assert_eq!(backoff(40), RETRY_MAX);
    }

    #[test]
    fn an_unwritable_journal_keeps_results_in_memory() {
        let o = Outbox::open(Path::new("/nonexistent-dir/agent.key.outbox"), &log());
        let mut o = o;
        o.add("u1", b"{}");
        assert_eq!(o.len(), 1);
        assert_eq!(
            journal_path(Path::new("/etc/a.key")),
            Path::new("/etc/a.key.outbox")
        );
    }
}
