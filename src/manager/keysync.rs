//! Key decisions shared by the managers of one PostgreSQL job store (issue
//! 14, "keys accepted once"): `mgmt keys accept` on one manager's host admits
//! the key on every manager of the store. With the embedded store nothing of
//! this runs.
//!
//! Each manager keeps its key directory as the truth its gate reads (and
//! reloads when it changes, as after a local `mgmt keys`). A thread of its
//! own, never the manager's loop, makes one pass a [`PASS_INTERVAL`]:
//! - it pushes the directory's changes since the last pass to the table
//!   `service_mgr.keys` (migrations/postgres/0002_keys.sql): a key whose state
//!   differs from the one last agreed with the table, or that is gone
//!   (state `deleted`), stamped with the time the pass saw it;
//! - it reads the rows changed since the last it saw (by their `seq`, at most
//!   [`PULL_MAX`] a pass) and applies those that differ to the directory, with
//!   [`KeyStore::set_decided`] (no limits: those applied where the key was
//!   filed), which the gate then reloads as usual.
//!
//! The last change wins by time (the row keeps a change only if it is newer
//! than the row's); a pending key never replaces an accepted or rejected row,
//! as in the key store itself filing is no decision. A push the table refused
//! is undone locally: the row's state is applied instead.
//!
//! What was last agreed with the table is kept in `keys/shared.json`, so that
//! a change made while the manager was down (`mgmt keys` on its host) is
//! pushed when it starts, and a decision made elsewhere meanwhile is applied.
//! A manager without that file (its first start on the shared store) joins:
//! its keys the table lacks are added, for the others the table's state wins.
//!
//! The database being down stops nothing: the pass fails, is logged once,
//! retried every pass, and the next pass that reaches the database catches up
//! (every [`RESCAN_INTERVAL`] the rows are read again from the start, in
//! pages, so that a row whose change committed out of order is not missed).

use crate::jobstore::postgres::{config, connect, reason, redact};
use crate::security::{KeyState, KeyStore, PublicKey};
use postgres::Client;
use slog::{error, info, warn, Logger};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How often a manager pushes its changes and reads the others'.
pub const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// Rows one pass reads at most; local changes one pass pushes at most.
pub const PULL_MAX: i64 = 500;
pub const PUSH_MAX: usize = 500;
/// How often every row is read again, from the start (in pages of [`PULL_MAX`]).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(300);
/// Rows of deleted keys are dropped this long after the deletion.
pub const DELETED_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// A statement may run this long (server side).
const STATEMENT_TIMEOUT_MS: u64 = 5000;
/// What was last agreed with the table, in the key directory.
pub const SHARED_FILE: &str = "shared.json";
/// How long a stopping manager waits for the thread.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Why key decisions are not being shared right now, for `manager.status`
/// (`None` while they are).
pub type Warning = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// The running sync thread; dropping it stops the thread.
pub struct KeySync {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    warning: Warning,
}

impl KeySync {
    /// Start syncing the key directory `dir` with the store at `url`. Fails
    /// only if the URL does not parse or the thread cannot start; a database
    /// that cannot be reached is retried by the thread.
    pub fn start(url: &str, dir: &Path, log: &Logger) -> anyhow::Result<KeySync> {
        let shown = redact(url);
        let log = log.new(slog::o!("key_sync" => shown.clone()));
        let warning = Warning::default();
        let syncer = Syncer {
            warning: warning.clone(),
            config: config(url, STATEMENT_TIMEOUT_MS, true)?,
            url: shown,
            client: None,
            store: None,
            dir: dir.to_owned(),
            known: HashMap::new(),
            joining: true,
            dirty: false,
            cursor: 0,
            rescan_at: Instant::now(),
            purged_at: None,
            seen: Vec::new(),
            failing: None,
            host: crate::host::HostInfo::read().node,
            log,
        };
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("keysync".into())
            .spawn(move || syncer.run(&stopped))
            .map_err(|e| anyhow::anyhow!("cannot start the key sync thread: {e}"))?;
        Ok(KeySync {
            stop: Some(stop),
            thread: Some(thread),
            warning,
        })
    }

    /// The shared warning the thread keeps up to date.
    pub fn warning(&self) -> Warning {
        self.warning.clone()
    }
}

impl Drop for KeySync {
    fn drop(&mut self) {
        drop(self.stop.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        // A pass waiting on the database ends within its timeouts; the
        // manager does not wait that long to stop (the next start catches up).
        let deadline = Instant::now() + STOP_WAIT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

/// A key's state in the table: a [`KeyState`], or gone.
fn state_name(state: Option<KeyState>) -> &'static str {
    state.map_or("deleted", KeyState::as_str)
}

fn parse_state(s: &str) -> Option<Option<KeyState>> {
    match s {
        "deleted" => Some(None),
        s => KeyState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .map(Some),
    }
}

/// Why a pass failed: the database, or the local key directory.
enum PassError {
    Db(String),
    Local(String),
}

struct Syncer {
    config: postgres::Config,
    url: String,
    client: Option<Client>,
    /// The key directory, opened on the first pass.
    store: Option<KeyStore>,
    dir: PathBuf,
    /// Key id -> (state, key line) last agreed with the table.
    known: HashMap<String, (KeyState, String)>,
    /// No [`SHARED_FILE`]: this manager joins the table (see the module doc).
    joining: bool,
    dirty: bool,
    /// The `seq` of the last row read.
    cursor: i64,
    rescan_at: Instant,
    purged_at: Option<Instant>,
    /// The key directories' modification times at the last reload.
    seen: Vec<Option<SystemTime>>,
    /// Why the last pass failed, while it fails (logged once).
    failing: Option<String>,
    /// What `manager.status` says of it.
    warning: Warning,
    host: String,
    log: Logger,
}

impl Syncer {
    fn run(mut self, stopped: &mpsc::Receiver<()>) {
        self.load_known();
        loop {
            match self.pass() {
                Ok(()) => {
                    self.say(None);
                    if let Some(why) = self.failing.take() {
                        info!(self.log, "key decisions shared again: caught up with the job store";
                            "was" => why);
                    }
                }
                Err(PassError::Db(why)) => {
                    self.client = None;
                    self.fail(why, "cannot reach the PostgreSQL job store: key decisions are not shared with the other managers until it answers (retried every second)");
                }
                Err(PassError::Local(why)) => {
                    self.fail(why, "cannot read or write the key directory: key decisions are not shared until it is fixed (retried every second)");
                }
            }
            match stopped.recv_timeout(PASS_INTERVAL) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    /// Log a failure once, until a pass succeeds again.
    fn fail(&mut self, why: String, what: &str) {
        if self.failing.is_none() {
            error!(self.log, "{}", what; "error" => &why);
        }
        self.say(Some(format!("{what}: {why}")));
        self.failing = Some(why);
    }

    fn say(&self, warning: Option<String>) {
        // A plain string: a panic elsewhere cannot leave it torn.
        *self.warning.lock().unwrap_or_else(|e| e.into_inner()) = warning;
    }

    fn shared_file(&self) -> PathBuf {
        self.dir.join(SHARED_FILE)
    }

    fn load_known(&mut self) {
        let path = self.shared_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                warn!(self.log, "cannot read the key sync state: joining the shared keys anew (the job store's state wins)";
                    "file" => %path.display(), "error" => %e);
                return;
            }
        };
        let parsed: Result<HashMap<String, (String, String)>, _> = serde_json::from_str(&text);
        let Ok(entries) = parsed else {
            warn!(self.log, "damaged key sync state: joining the shared keys anew (the job store's state wins)";
                "file" => %path.display());
            return;
        };
        self.known = entries
            .into_iter()
            .filter_map(|(id, (state, line))| match parse_state(&state) {
                Some(Some(s)) => Some((id, (s, line))),
                _ => None,
            })
            .collect();
        self.joining = false;
    }

    fn save_known(&mut self) -> Result<(), PassError> {
        if !self.dirty {
            return Ok(());
        }
        let entries: HashMap<&String, (&str, &String)> = self
            .known
            .iter()
            .map(|(id, (s, line))| (id, (s.as_str(), line)))
            .collect();
        let text = serde_json::to_string(&entries).unwrap_or_default();
        let path = self.shared_file();
        // Of this process: two managers on one state_dir each write their own.
        let tmp = self
            .dir
            .join(format!(".{SHARED_FILE}.{}.tmp", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| fs::rename(&tmp, &path));
        written.map_err(|e| PassError::Local(format!("cannot write {}: {e}", path.display())))?;
        self.dirty = false;
        Ok(())
    }

    fn mtimes(&self) -> Vec<Option<SystemTime>> {
        KeyState::ALL
            .iter()
            .map(|s| {
                fs::metadata(self.dir.join(s.as_str()))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .collect()
    }

    /// The key directory, re-read if a folder changed since the last pass.
    /// A time less than a second old is not taken as seen (a folder's clock is
    /// coarse: a second change in the same tick would leave it as it was).
    fn local(&mut self) -> Result<&mut KeyStore, PassError> {
        let local = |e: crate::security::KeyStoreError| PassError::Local(format!("{e:#}"));
        let now = self.mtimes();
        match &mut self.store {
            None => self.store = Some(KeyStore::open(&self.dir).map_err(local)?),
            Some(store) if now != self.seen => store.reload().map_err(local)?,
            Some(_) => {}
        }
        let settled = SystemTime::now() - Duration::from_secs(1);
        self.seen = now
            .into_iter()
            .map(|t| t.filter(|t| *t < settled))
            .collect();
        Ok(self.store.as_mut().expect("opened above"))
    }

    fn pass(&mut self) -> Result<(), PassError> {
        self.local()?;
        if self.client.is_none() {
            let client = connect(&self.config, &self.url).map_err(|e| PassError::Db(reason(&e)))?;
            self.client = Some(client);
        }
        self.push()?;
        self.pull()?;
        self.purge()?;
        self.save_known()
    }

    /// Push the local changes: keys whose state differs from the one last
    /// agreed, and keys gone.
    fn push(&mut self) -> Result<(), PassError> {
        let store = self.local()?;
        let mut changes: Vec<(String, String, Option<KeyState>)> = Vec::new();
        let mut present = HashMap::new();
        for (state, key) in store.list() {
            present.insert(key.key_id(), ());
            let id = key.key_id();
            if self.known.get(&id).map(|(s, _)| *s) != Some(state) {
                changes.push((id, key.to_string(), Some(state)));
            }
        }
        for (id, (_, line)) in &self.known {
            if !present.contains_key(id) {
                changes.push((id.clone(), line.clone(), None));
            }
        }
        // A joining manager's keys lose to the table's rows: time 0.
        let at = if self.joining {
            0
        } else {
            crate::clock::now_ms() as i64
        };
        let all = changes.len() <= PUSH_MAX;
        for (id, line, state) in changes.into_iter().take(PUSH_MAX) {
            let Ok(key) = line.parse::<PublicKey>() else {
                continue; // read from our own files: cannot happen
            };
            let client = self.client.as_mut().expect("connected");
            client
                .execute(
                    "INSERT INTO service_mgr.keys
                         (key_id, key, role, name, fingerprint, state, changed_ms, changed_by)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (key_id) DO UPDATE SET
                         key = excluded.key, state = excluded.state,
                         changed_ms = excluded.changed_ms, changed_by = excluded.changed_by,
                         seq = nextval('service_mgr.keys_seq')
                     WHERE service_mgr.keys.changed_ms < excluded.changed_ms
                       AND service_mgr.keys.state <> excluded.state
                       AND (excluded.state <> 'pending'
                            OR service_mgr.keys.state IN ('pending', 'deleted'))",
                    &[
                        &id,
                        &line,
                        &key.role().to_string(),
                        &key.name(),
                        &key.fingerprint(),
                        &state_name(state),
                        &at,
                        &self.host,
                    ],
                )
                .map_err(|e| PassError::Db(format!("cannot write a key decision: {e}")))?;
            // Whether the table took it or kept a newer decision: what it
            // holds now is what this manager holds.
            let row = client
                .query_opt(
                    "SELECT state FROM service_mgr.keys WHERE key_id = $1",
                    &[&id],
                )
                .map_err(|e| PassError::Db(format!("cannot read a key decision: {e}")))?;
            let held: Option<KeyState> = row
                .and_then(|r| parse_state(r.get::<_, &str>(0)))
                .unwrap_or(state);
            if held != state {
                info!(self.log, "key decision of another manager is newer: applied here instead of this one";
                    "key" => key.fingerprint(), "name" => key.name(),
                    "here" => state_name(state), "shared" => state_name(held));
            }
            self.apply(&key, held);
        }
        if self.joining && all {
            // All pushed: from now on a change is stamped with its time.
            self.joining = false;
            self.dirty = true;
        }
        Ok(())
    }

    /// Read the rows changed since the last pass and apply them.
    fn pull(&mut self) -> Result<(), PassError> {
        if self.cursor > 0 && self.rescan_at.elapsed() >= RESCAN_INTERVAL {
            self.cursor = 0;
        }
        if self.cursor == 0 {
            self.rescan_at = Instant::now();
        }
        let client = self.client.as_mut().expect("connected");
        let rows = client
            .query(
                "SELECT key_id, key, state, seq, changed_by FROM service_mgr.keys
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&self.cursor, &PULL_MAX],
            )
            .map_err(|e| PassError::Db(format!("cannot read the key decisions: {e}")))?;
        for row in rows {
            let (id, line, state, seq, by): (String, String, String, i64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            self.cursor = seq;
            let (Ok(key), Some(state)) = (line.parse::<PublicKey>(), parse_state(&state)) else {
                warn!(self.log, "unreadable key decision in the job store: skipped";
                    "key_id" => &id, "state" => &state, "changed_by" => &by);
                continue;
            };
            if key.key_id() != id {
                warn!(self.log, "key decision whose key_id is not its key's: skipped";
                    "key_id" => &id, "key" => key.fingerprint(), "changed_by" => &by);
                continue;
            }
            let store = self.local()?;
            let here = store.state_of(&id);
            // A local change not pushed yet is pushed first, then settled.
            if here != self.known.get(&id).map(|(s, _)| *s) || here == state {
                if here == state {
                    self.agree(&key, state);
                }
                continue;
            }
            info!(self.log, "key decision of another manager applied";
                "key" => key.fingerprint(), "role" => key.role().to_string(), "name" => key.name(),
                "state" => state_name(state), "was" => state_name(here), "changed_by" => &by);
            self.apply(&key, state);
        }
        Ok(())
    }

    /// Put `key` in `state` here, and take it as agreed with the table.
    fn apply(&mut self, key: &PublicKey, state: Option<KeyState>) {
        let applied = match self.store.as_mut() {
            Some(store) => store.set_decided(key, state),
            None => return,
        };
        match applied {
            Ok(_) => self.agree(key, state),
            Err(e) => {
                warn!(self.log, "cannot apply a key decision of another manager";
                    "key" => key.fingerprint(), "state" => state_name(state),
                    "error" => format!("{e:#}"));
            }
        }
    }

    fn agree(&mut self, key: &PublicKey, state: Option<KeyState>) {
        let id = key.key_id();
        let before = self.known.get(&id).map(|(s, _)| *s);
        if before == state {
            return;
        }
        match state {
            Some(s) => self.known.insert(id, (s, key.to_string())),
            None => self.known.remove(&id),
        };
        self.dirty = true;
    }

    /// Drop the rows of keys deleted long ago, now and then.
    fn purge(&mut self) -> Result<(), PassError> {
        if self.purged_at.is_some_and(|t| t.elapsed() < PURGE_INTERVAL) {
            return Ok(());
        }
        self.purged_at = Some(Instant::now());
        let before = crate::clock::now_ms().saturating_sub(DELETED_KEPT.as_millis() as u64) as i64;
        let client = self.client.as_mut().expect("connected");
        client
            .execute(
                "DELETE FROM service_mgr.keys WHERE state = 'deleted' AND changed_ms < $1",
                &[&before],
            )
            .map_err(|e| PassError::Db(format!("cannot drop old key decisions: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in [
            None,
            Some(KeyState::Pending),
            Some(KeyState::Accepted),
            Some(KeyState::Rejected),
        ] {
            assert_eq!(parse_state(state_name(s)), Some(s));
        }
        assert_eq!(parse_state("maybe"), None);
    }
}
