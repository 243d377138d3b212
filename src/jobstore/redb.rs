//! The embedded job store (the default): every job and every node's result
//! in a crash-safe database file (redb), `state_dir/jobs.redb`, for one
//! manager. The merge rules are the module's ([`super`]).
//!
//! # Layout
//! Four tables, values as JSON bytes (simple to dump and debug) except results:
//! - `jobs`: uuid -> `JobMeta` (created time, request, expected nodes), written
//!   once per job;
//! - `progress`: uuid -> `Progress` (finished time, per-status counts,
//!   conflicts): small, rewritten once per batch for each job the batch touches,
//!   so that `list` reads no results and a batch does not rewrite the
//!   expected-node list of a large cluster;
//! - `results`: (uuid, node) -> [`NodeResult`]: adding a result writes one row,
//!   in a compact binary form (see `encode_result`): the result's own head
//!   (version, uuid, node, status) is what the key already holds and is not
//!   stored again; rows of the earlier JSON form still read;
//! - `by_time`: (created_ms, uuid) -> (): `list` (newest first) and `expire`
//!   walk this index instead of scanning the jobs.
//!
//! # Durability
//! [`RedbStore::apply`] commits one write transaction per call. On Linux,
//! redb's `Durability::Eventual` is an fsync just like `Immediate` (only macOS
//! has a cheaper barrier), so every batch is committed with
//! `Durability::None`: visible at once, it reaches the disk with the next
//! durable commit. Durable commits (fsync, with redb's quick repair so that
//! reopening after a crash needs no full scan) are: [`RedbStore::expire`],
//! [`RedbStore::flush`], dropping the store, and a background thread that
//! flushes within [`FLUSH_INTERVAL`] after any lazy commit. A crash of the
//! process or the machine thus loses at most the jobs and results of the last
//! `FLUSH_INTERVAL` (about a second), and never tears the database. (A durable
//! commit per new job cost tens of milliseconds per request on the dev VM.)
//! Measured on the 2-core dev VM (release build, jobs of 2000 nodes, batches of
//! 100 results; the `jobstore_*` figures of `cargo run --release -p service-mgr-bench`): about
//! 40,000-60,000 results/s lazily, against 8,000-10,000/s with a durable
//! commit per batch, even on this VM's cheap fsync (a debug build does about
//! 5,000/s lazily).
//!
//! # Damage
//! redb panics on some damaged files instead of returning an error. Every
//! public operation runs under `catch_unwind`: a panic becomes
//! [`StoreError::Panicked`] for that call only. [`RedbStore::open_recovering`]
//! (the manager's way in) runs redb's integrity check and repair at every
//! start; a file that cannot be opened or repaired is moved aside to
//! `jobs.redb.damaged-<unix time>` and an empty store replaces it, with a
//! warning for the log and `manager.status`.
//!

use redb::{
    Database, DatabaseError, Durability, ReadableTable, ReadableTableMetadata, StorageError, Table,
    TableDefinition, WriteTransaction,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::{hash_map::Entry, BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    HistoryEntry, HistoryFilter, JobRecord, JobStore, JobSummary, NodeResult, Result, StoreError,
    StoreEvent, StoreStats, NO_RESPONSE,
};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const PROGRESS: TableDefinition<&str, &[u8]> = TableDefinition::new("progress");
const RESULTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("results");
const BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("by_time");

/// Longest time a lazily committed result waits for its fsync.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// redb's page cache (its default is 1 GiB, too much for a daemon).
const CACHE_BYTES: usize = 64 << 20;

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The same, borrowed, so that `apply` serializes without cloning results.
#[derive(Serialize)]
struct NodeResultRef<'a> {
    node: &'a str,
    status: &'a str,
    received_ms: u64,
    result: &'a RawValue,
}

/// Row of `jobs`. `serde(default)` lets older rows load after fields are added.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct JobMeta {
    created_ms: u64,
    request: Value,
    expected: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
}

/// Row of `progress`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Progress {
    finished_ms: Option<u64>,
    status_counts: BTreeMap<String, usize>,
    conflicts: u64,
}

impl Progress {
    fn count(&mut self, status: &str, delta: isize) {
        let n = self.status_counts.entry(status.to_owned()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.status_counts.remove(status);
        }
    }
}

/// Since when lazy (`Durability::None`) commits await their fsync, if any do;
/// and a lock held across each take-and-sync, so that [`JobStore::flush`]
/// returns only once a sync the flusher thread already started is done.
#[derive(Default)]
struct Dirty(Mutex<Option<Instant>>, Mutex<()>);

impl Dirty {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // The guarded value is a plain timestamp: a panic elsewhere cannot leave it torn.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn mark(&self) {
        self.lock().get_or_insert_with(Instant::now);
    }
    fn take(&self) -> Option<Instant> {
        self.lock().take()
    }
    /// A flush failed: what it took is still unsynced.
    fn restore(&self, since: Instant) {
        let mut g = self.lock();
        *g = Some(g.map_or(since, |t| t.min(since)));
    }
    fn since(&self) -> Option<Instant> {
        *self.lock()
    }
    fn syncing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.1.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The open job store. Cheap to share by reference between threads.
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    dirty: Arc<Dirty>,
    /// Dropping it stops the flusher thread.
    stop: Option<mpsc::Sender<()>>,
    flusher: Option<JoinHandle<()>>,
    /// Commit result-only batches lazily; the bench's durable figure turns it off.
    lazy: bool,
}

impl RedbStore {
    /// Open the store at `path` as [`RedbStore::open`] does, but never fail on
    /// the file's contents: it is checked (and repaired by redb if it can be);
    /// a file that cannot be opened or repaired is moved aside to
    /// `jobs.redb.damaged-<unix time>` and a new, empty store takes its place.
    /// Returns the store and, when something was wrong, what (for the log and
    /// `manager.status`). Only a directory that cannot be written or a store
    /// in use by another process is still an error.
    pub fn open_recovering(path: &Path) -> Result<(RedbStore, Option<String>)> {
        let empty = std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
        let damage = match guarded("opening", path, || Self::open_checked(path)) {
            Ok((store, repaired)) => {
                let note = if empty {
                    Some(format!(
                        "job store {} was an empty file (0 bytes); started a new one: earlier jobs, if any, are lost",
                        path.display()
                    ))
                } else {
                    repaired.then(|| {
                        format!(
                            "job store {} was damaged and has been repaired; some jobs may be missing",
                            path.display()
                        )
                    })
                };
                return Ok((store, note));
            }
            Err(e) if !is_damage(&e) => return Err(e),
            Err(e) => e,
        };
        // What redb said, without the advice of our own Display.
        let damage = match damage {
            StoreError::Panicked { message, .. } => message,
            e => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text = format!("{text}: {s}");
                    source = s.source();
                }
                text
            }
        };
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".damaged-{secs}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(path, &aside).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "it is damaged ({damage}) and cannot be moved aside to {}: {source}",
                    aside.display()
                ),
            ),
        })?;
        let (store, _) = guarded("opening", path, || Self::open_checked(path))?;
        let note = format!(
            "job store {} was damaged beyond repair ({damage}); moved it aside to {} and started an empty store: earlier jobs are not available",
            path.display(),
            aside.display()
        );
        Ok((store, Some(note)))
    }

    /// Open, then run redb's integrity check; `true` if it repaired something.
    fn open_checked(path: &Path) -> Result<(RedbStore, bool)> {
        Self::open_with(path, |db| {
            db.check_integrity()
                .map(|clean| !clean)
                .map_err(|source| StoreError::Database {
                    path: path.to_owned(),
                    source: Box::new(source),
                })
        })
    }

    /// Open or create the store at `path`, creating its directory.
    pub fn open(path: &Path) -> Result<RedbStore> {
        Ok(Self::open_with(path, |_| Ok(false))?.0)
    }

    fn open_with(
        path: &Path,
        check: impl FnOnce(&mut Database) -> Result<bool>,
    ) -> Result<(RedbStore, bool)> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(open_err)?;
        }
        make_private(path).map_err(open_err)?;
        let mut db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                    path: path.to_owned(),
                },
                DatabaseError::Storage(StorageError::Io(e)) => open_err(e),
                source => StoreError::Database {
                    path: path.to_owned(),
                    source: Box::new(source),
                },
            })?;
        let repaired = check(&mut db)?;
        let tx = begin(&db, true)?;
        tx.open_table(JOBS)?;
        tx.open_table(PROGRESS)?;
        tx.open_table(RESULTS)?;
        tx.open_table(BY_TIME)?;
        tx.commit()?;

        let db = Arc::new(db);
        let dirty = Arc::new(Dirty::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let (fdb, fdirty) = (db.clone(), dirty.clone());
        let flusher = std::thread::Builder::new()
            .name("jobstore-flush".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(FLUSH_INTERVAL)
                {
                    // On failure stay dirty and retry; a failing disk also fails `apply`.
                    let _syncing = fdirty.syncing();
                    if let Some(since) = fdirty.take() {
                        if guarded("flushing", Path::new(""), || flush_db(&fdb)).is_err() {
                            fdirty.restore(since);
                        }
                    }
                }
            })
            .map_err(redb::Error::Io)?;
        let store = RedbStore {
            db,
            path: path.to_owned(),
            dirty,
            stop: Some(stop),
            flusher: Some(flusher),
            lazy: true,
        };
        Ok((store, repaired))
    }

    /// Commit every batch durably (`false`) instead of lazily (`true`, the
    /// default); the bench measures both.
    pub fn set_lazy(&mut self, lazy: bool) {
        self.lazy = lazy;
    }

    /// Apply a batch of events in one write transaction (see the module doc
    /// for durability and merge rules).
    pub fn apply(&self, events: &[StoreEvent]) -> Result<()> {
        guarded("writing", &self.path, || self.apply_unguarded(events))
    }

    /// One job with all its results, or `None` if the store does not know it.
    pub fn get(&self, uuid: &str) -> Result<Option<JobRecord>> {
        Ok(self
            .get_page(uuid, 0, usize::MAX, usize::MAX)?
            .map(|(record, _)| record))
    }

    /// One page of a job: its results from `offset` on, at most `limit` of
    /// them and, past the first, no more than `max_bytes` of stored results
    /// (sized before they are decoded). With the offset of the next page, if
    /// there is one.
    pub fn get_page(
        &self,
        uuid: &str,
        offset: usize,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<(JobRecord, Option<usize>)>> {
        guarded("reading a job", &self.path, || {
            self.get_unguarded(uuid, offset, limit, max_bytes)
        })
    }

    /// Summaries of the `limit` newest jobs, newest first.
    pub fn list(&self, limit: usize) -> Result<Vec<JobSummary>> {
        Ok(self.list_page(0, limit)?.0)
    }

    /// The jobs after the newest `offset`, newest first, at most `limit`;
    /// with the offset of the next page, if there is one.
    pub fn list_page(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<JobSummary>, Option<usize>)> {
        guarded("listing jobs", &self.path, || {
            self.list_unguarded(offset, limit)
        })
    }

    /// Delete the jobs created before `older_than_ms` with their results;
    /// returns how many jobs went.
    pub fn expire(&self, older_than_ms: u64) -> Result<usize> {
        guarded("expiring old jobs", &self.path, || {
            self.expire_unguarded(older_than_ms)
        })
    }

    /// `apply` without the panic guard.
    fn apply_unguarded(&self, events: &[StoreEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // Every batch commits lazily, new jobs included: a durable commit costs
        // tens of milliseconds here, which a manager dispatching thousands of
        // requests a second cannot pay. The flusher makes it durable within
        // FLUSH_INTERVAL.
        let durable = !self.lazy;
        let tx = begin(&self.db, durable)?;
        {
            let mut t = Tables::open(&tx)?;
            // Each touched job's progress is read and written once per batch.
            let mut touched: HashMap<&str, Progress> = HashMap::new();
            for ev in events {
                let (uuid, at_ms) = ev.key();
                if let StoreEvent::NewJob {
                    request,
                    expected,
                    client,
                    ..
                } = ev
                {
                    let (request, expected) = (request.clone(), expected.clone());
                    t.put_meta(
                        uuid,
                        &JobMeta {
                            created_ms: at_ms,
                            request,
                            expected,
                            client: client.clone(),
                        },
                    )?;
                }
                let p = match touched.entry(uuid) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => v.insert(t.progress(uuid, at_ms)?),
                };
                let (node, status, result) = match ev {
                    StoreEvent::Result {
                        node,
                        status,
                        result,
                        ..
                    } => (node, &**status, &**result),
                    StoreEvent::NoResponse { node, .. } => (node, NO_RESPONSE, RawValue::NULL),
                    StoreEvent::Finished { .. } => {
                        p.finished_ms.get_or_insert(at_ms);
                        continue;
                    }
                    StoreEvent::NewJob { .. } => continue,
                };
                t.put_result(
                    p,
                    uuid,
                    NodeResultRef {
                        node,
                        status,
                        received_ms: at_ms,
                        result,
                    },
                )?;
            }
            for (uuid, p) in &touched {
                t.progress.insert(*uuid, encode(p).as_slice())?;
            }
        }
        tx.commit()?;
        if !durable {
            self.dirty.mark();
        }
        Ok(())
    }

    /// `get` without the panic guard.
    fn get_unguarded(
        &self,
        uuid: &str,
        offset: usize,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<(JobRecord, Option<usize>)>> {
        let tx = self.db.begin_read()?;
        let Some(row) = tx.open_table(JOBS)?.get(uuid)? else {
            return Ok(None);
        };
        let m: JobMeta = decode(row.value(), uuid)?;
        let p: Progress = match tx.open_table(PROGRESS)?.get(uuid)? {
            Some(row) => decode(row.value(), uuid)?,
            None => Progress::default(),
        };
        let mut results = Vec::new();
        let (mut total, mut bytes, mut next) = (0, 0usize, None);
        for row in tx.open_table(RESULTS)?.range((uuid, "")..)? {
            let (key, value) = row?;
            if key.value().0 != uuid {
                break;
            }
            total += 1;
            if total <= offset || next.is_some() {
                continue;
            }
            let size = value.value().len();
            if results.len() >= limit || (!results.is_empty() && bytes + size > max_bytes) {
                next = Some(offset + results.len());
                continue;
            }
            bytes += size;
            let (_, node) = key.value();
            results.push(decode_result(value.value(), uuid, node)?);
        }
        Ok(Some((
            JobRecord {
                uuid: uuid.to_owned(),
                created_ms: m.created_ms,
                request: m.request,
                expected: m.expected,
                client: m.client,
                results,
                results_total: total,
                finished_ms: p.finished_ms,
                conflicts: p.conflicts,
            },
            next,
        )))
    }

    /// The history (see [`JobStore::history`]): walks `by_time` from the
    /// newest job down to `since_ms`, reading the results of the jobs kept.
    pub fn history(
        &self,
        filter: &HistoryFilter,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, Option<usize>)> {
        guarded("reading the history", &self.path, || {
            self.history_unguarded(filter, offset, limit)
        })
    }

    fn history_unguarded(
        &self,
        filter: &HistoryFilter,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, Option<usize>)> {
        let tx = self.db.begin_read()?;
        let (jobs, results) = (tx.open_table(JOBS)?, tx.open_table(RESULTS)?);
        let by_time = tx.open_table(BY_TIME)?;
        let since = filter.since_ms.unwrap_or(0);
        let (mut out, mut skipped) = (Vec::new(), 0usize);
        for row in by_time.range((since, "")..)?.rev() {
            let (key, _) = row?;
            let (_, uuid) = key.value();
            let Some(meta) = jobs.get(uuid)? else {
                continue;
            };
            let m: JobMeta = decode(meta.value(), uuid)?;
            let service = super::request_text(&m.request, "service");
            if filter.service.as_ref().is_some_and(|s| *s != service)
                || !filter.client_matches(m.client.as_deref())
            {
                continue;
            }
            let first = filter.node.as_deref().unwrap_or("");
            for r in results.range((uuid, first)..)? {
                let (key, value) = r?;
                let (u, node) = key.value();
                if u != uuid || filter.node.as_ref().is_some_and(|n| n != node) {
                    break;
                }
                if skipped < offset {
                    skipped += 1;
                    continue;
                }
                if out.len() == limit {
                    return Ok((out, Some(offset.saturating_add(limit))));
                }
                let r = decode_result(value.value(), uuid, node)?;
                out.push(HistoryEntry {
                    uuid: uuid.to_owned(),
                    requested_ms: m.created_ms,
                    client: m.client.clone(),
                    cmd: super::request_text(&m.request, "cmd"),
                    service: service.clone(),
                    topic: super::request_text(&m.request, "topic"),
                    node: node.to_owned(),
                    status: r.status,
                    received_ms: r.received_ms,
                });
            }
        }
        Ok((out, None))
    }

    /// `list` without the panic guard.
    fn list_unguarded(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<JobSummary>, Option<usize>)> {
        let tx = self.db.begin_read()?;
        let (jobs, progress) = (tx.open_table(JOBS)?, tx.open_table(PROGRESS)?);
        let mut out = Vec::new();
        let by_time = tx.open_table(BY_TIME)?;
        let mut rows = by_time.iter()?.rev().skip(offset);
        for row in rows.by_ref().take(limit) {
            let (key, _) = row?;
            let (_, uuid) = key.value();
            let Some(meta) = jobs.get(uuid)? else {
                continue;
            };
            let m: JobMeta = decode(meta.value(), uuid)?;
            let p: Progress = match progress.get(uuid)? {
                Some(row) => decode(row.value(), uuid)?,
                None => Progress::default(),
            };
            let answered = p.status_counts.iter().filter(|(s, _)| *s != NO_RESPONSE);
            out.push(JobSummary {
                uuid: uuid.to_owned(),
                created_ms: m.created_ms,
                request: m.request,
                expected_count: m.expected.len(),
                answered_count: answered.map(|(_, n)| n).sum(),
                status_counts: p.status_counts,
                finished_ms: p.finished_ms,
                client: m.client,
            });
        }
        let next = rows.next().is_some().then(|| offset.saturating_add(limit));
        Ok((out, next))
    }

    /// `expire` without the panic guard.
    fn expire_unguarded(&self, older_than_ms: u64) -> Result<usize> {
        self.remove_oldest(usize::MAX, older_than_ms)
    }

    /// Delete up to `limit` of the oldest jobs created before `older_than_ms`,
    /// with their results, in one durable transaction.
    fn remove_oldest(&self, limit: usize, older_than_ms: u64) -> Result<usize> {
        let tx = begin(&self.db, true)?;
        let n = {
            let mut t = Tables::open(&tx)?;
            let mut old = Vec::new();
            for row in t.by_time.range(..(older_than_ms, ""))?.take(limit) {
                let (key, _) = row?;
                let (ms, uuid) = key.value();
                old.push((ms, uuid.to_owned()));
            }
            for (ms, uuid) in &old {
                let mut nodes = Vec::new();
                for row in t.results.range((uuid.as_str(), "")..)? {
                    let (key, _) = row?;
                    let (u, node) = key.value();
                    if u != uuid {
                        break;
                    }
                    nodes.push(node.to_owned());
                }
                for node in &nodes {
                    t.results.remove((uuid.as_str(), node.as_str()))?;
                }
                t.jobs.remove(uuid.as_str())?;
                t.progress.remove(uuid.as_str())?;
                t.by_time.remove((*ms, uuid.as_str()))?;
            }
            old.len()
        };
        tx.commit()?;
        Ok(n)
    }

    /// Make every commit so far durable (fsync). The store also does this by
    /// itself within `FLUSH_INTERVAL` and when dropped. On `Ok`, every commit
    /// before the call is on disk (the manager acknowledges results then).
    pub fn flush(&self) -> Result<()> {
        let _syncing = self.dirty.syncing();
        if let Some(since) = self.dirty.take() {
            if let Err(e) = guarded("flushing", &self.path, || flush_db(&self.db)) {
                self.dirty.restore(since);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Since when committed events await their fsync (`None`: all durable).
    pub fn unsynced_since(&self) -> Option<Instant> {
        self.dirty.since()
    }

    /// How many jobs and results the store holds, and the bytes of the result
    /// rows (keys and values, without redb's own overhead).
    pub fn stats(&self) -> Result<StoreStats> {
        guarded("counting", &self.path, || {
            let tx = self.db.begin_read()?;
            let mut stats = StoreStats {
                jobs: tx.open_table(JOBS)?.len()?,
                ..StoreStats::default()
            };
            for row in tx.open_table(RESULTS)?.iter()? {
                let (key, value) = row?;
                let (uuid, node) = key.value();
                stats.results += 1;
                stats.result_bytes += (uuid.len() + node.len() + value.value().len()) as u64;
            }
            drop(tx);
            stats.live_bytes = self.used_bytes()?;
            Ok(stats)
        })
    }

    /// Bytes of the file in use (pages allocated to data and indexes): what
    /// the size cap counts. Walks every tree: only for the cap and tests.
    fn used_bytes(&self) -> Result<u64> {
        // Pages freed by lazy commits are released by the durable commits after them.
        flush_db(&self.db)?;
        flush_db(&self.db)?;
        let tx = self.db.begin_write()?;
        let stats = tx.stats()?;
        tx.abort()?;
        Ok(stats.allocated_pages() * stats.page_size() as u64)
    }

    /// Keep the store under `max_bytes`: when the file is larger and the data
    /// in it too (past 90% of the cap), the oldest jobs go with their results,
    /// down to about 80% of it. Returns how many jobs went. The file itself
    /// does not shrink: the pages freed are reused by later writes.
    pub fn trim_to(&self, max_bytes: u64) -> Result<usize> {
        guarded("trimming to the size cap", &self.path, || {
            let file = self
                .size_bytes()
                .map_err(|e| StoreError::Db(Box::new(redb::Error::Io(e))))?;
            if file <= max_bytes {
                return Ok(0);
            }
            let mut used = self.used_bytes()?;
            if used <= max_bytes / 10 * 9 {
                return Ok(0);
            }
            // Jobs are removed in proportion to the excess; the file's fixed
            // overhead makes that an underestimate, hence a few rounds.
            let mut removed = 0;
            for _ in 0..8 {
                let jobs = self.db.begin_read()?.open_table(JOBS)?.len()?;
                if jobs == 0 || used <= max_bytes / 10 * 8 {
                    break;
                }
                let excess = used - max_bytes / 10 * 8;
                let n = (u128::from(jobs) * u128::from(excess) / u128::from(used)).max(1);
                removed +=
                    self.remove_oldest(usize::try_from(n).unwrap_or(usize::MAX), u64::MAX)?;
                used = self.used_bytes()?;
            }
            Ok(removed)
        })
    }

    /// The size of the database file.
    pub fn size_bytes(&self) -> std::io::Result<u64> {
        Ok(std::fs::metadata(&self.path)?.len())
    }
}

impl JobStore for RedbStore {
    fn apply(&self, events: &[StoreEvent]) -> Result<()> {
        RedbStore::apply(self, events)
    }
    fn get_page(
        &self,
        uuid: &str,
        offset: usize,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<(JobRecord, Option<usize>)>> {
        RedbStore::get_page(self, uuid, offset, limit, max_bytes)
    }
    fn list_page(&self, offset: usize, limit: usize) -> Result<(Vec<JobSummary>, Option<usize>)> {
        RedbStore::list_page(self, offset, limit)
    }
    fn expire(&self, older_than_ms: u64) -> Result<usize> {
        RedbStore::expire(self, older_than_ms)
    }
    fn trim_to(&self, max_bytes: u64) -> Result<usize> {
        RedbStore::trim_to(self, max_bytes)
    }
    fn flush(&self) -> Result<()> {
        RedbStore::flush(self)
    }
    fn unsynced_since(&self) -> Option<Instant> {
        RedbStore::unsynced_since(self)
    }
    fn size_bytes(&self) -> std::io::Result<u64> {
        RedbStore::size_bytes(self)
    }
    fn history(
        &self,
        filter: &HistoryFilter,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, Option<usize>)> {
        RedbStore::history(self, filter, offset, limit)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        // Nobody to tell: a failure here leaves at most FLUSH_INTERVAL unsynced.
        let _ = self.flush();
    }
}

/// The tables of one write transaction.
struct Tables<'tx> {
    jobs: Table<'tx, &'static str, &'static [u8]>,
    progress: Table<'tx, &'static str, &'static [u8]>,
    results: Table<'tx, (&'static str, &'static str), &'static [u8]>,
    by_time: Table<'tx, (u64, &'static str), ()>,
}

impl<'tx> Tables<'tx> {
    fn open(tx: &'tx WriteTransaction) -> Result<Self> {
        Ok(Tables {
            jobs: tx.open_table(JOBS)?,
            progress: tx.open_table(PROGRESS)?,
            results: tx.open_table(RESULTS)?,
            by_time: tx.open_table(BY_TIME)?,
        })
    }

    /// Write a job's meta, moving its `by_time` entry if a stub had another time.
    fn put_meta(&mut self, uuid: &str, meta: &JobMeta) -> Result<()> {
        let old = match self.jobs.get(uuid)? {
            Some(row) => Some(decode::<JobMeta>(row.value(), uuid)?.created_ms),
            None => None,
        };
        if let Some(ms) = old {
            self.by_time.remove((ms, uuid))?;
        }
        self.by_time.insert((meta.created_ms, uuid), ())?;
        self.jobs.insert(uuid, encode(meta).as_slice())?;
        Ok(())
    }

    /// A job's progress; a job the store does not know gets a stub meta.
    fn progress(&mut self, uuid: &str, stub_ms: u64) -> Result<Progress> {
        if let Some(row) = self.progress.get(uuid)? {
            return decode(row.value(), uuid);
        }
        if self.jobs.get(uuid)?.is_none() {
            let stub = JobMeta {
                created_ms: stub_ms,
                ..JobMeta::default()
            };
            self.put_meta(uuid, &stub)?;
        }
        Ok(Progress::default())
    }

    /// Store a node's result unless the merge rules (module doc) keep an earlier one.
    fn put_result(&mut self, p: &mut Progress, uuid: &str, row: NodeResultRef) -> Result<()> {
        let key = (uuid, row.node);
        if let Some(prev) = self.results.get(key)? {
            let prev = decode_result(prev.value(), uuid, row.node)?;
            if prev.status != NO_RESPONSE || row.status == NO_RESPONSE {
                // Rare (a repeated answer): only then is the new one decoded.
                let differs = prev.status != row.status
                    || serde_json::from_str::<Value>(row.result.get()).ok() != Some(prev.result);
                if row.status != NO_RESPONSE && differs {
                    p.conflicts += 1;
                }
                return Ok(());
            }
            p.count(&prev.status, -1);
        }
        p.count(row.status, 1);
        self.results
            .insert(key, encode_result(uuid, &row).as_slice())?;
        Ok(())
    }
}

/// Run a store operation, turning a panic inside redb (which it does on some
/// damaged files instead of returning an error) into an error for this
/// operation alone. The release profile keeps `panic = "unwind"` for this.
fn guarded<T>(what: &'static str, path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        Err(StoreError::Panicked {
            what,
            path: path.to_owned(),
            message: format!("internal error in the database library: {message}"),
        })
    })
}

/// Whether an open failure comes from the file's contents (so that moving the
/// file aside helps), rather than from permissions, a lock or the directory.
fn is_damage(e: &StoreError) -> bool {
    use std::io::ErrorKind;
    let io_damage =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData);
    match e {
        StoreError::InUse { .. } => false,
        StoreError::Open { source, .. } => io_damage(source),
        StoreError::Database { source, .. } => match &**source {
            DatabaseError::DatabaseAlreadyOpen => false,
            DatabaseError::Storage(StorageError::Io(e)) => io_damage(e),
            _ => true,
        },
        StoreError::Db(e) => match &**e {
            redb::Error::Io(e) => io_damage(e),
            redb::Error::DatabaseAlreadyOpen => false,
            _ => true,
        },
        StoreError::Corrupt { .. } | StoreError::Panicked { .. } => true,
        StoreError::Postgres { .. } | StoreError::Unavailable { .. } | StoreError::Newer { .. } => {
            false
        }
    }
}

/// An empty durable commit persists every lazy commit before it.
fn flush_db(db: &Database) -> Result<()> {
    begin(db, true)?.commit()?;
    Ok(())
}
/// The store holds who asked for what and every command's output: make its
/// file mode 0600 before redb opens it (redb would create it 0644 less the
/// umask), and take group and other access away from one made before.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

/// A write transaction, durable or lazy. Durable ones save redb's allocator
/// state too (quick repair), so reopening after a crash needs no full scan.
fn begin(db: &Database, durable: bool) -> Result<WriteTransaction> {
    let mut tx = db.begin_write()?;
    tx.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    });
    tx.set_quick_repair(durable);
    Ok(tx)
}

/// First byte of a `results` row in the compact format (a row written before
/// it is a JSON [`NodeResult`] and starts with `{`).
const ROW_V1: u8 = 1;
/// The result follows as received.
const RESULT_AS_IS: u8 = 0;
/// The result follows without its envelope's head (see [`envelope_head`]).
const RESULT_HEADLESS: u8 = 1;

/// The head every result of ours starts with, `{"v":2,"uuid":U,"node":N,"status":S,`:
/// the row's key and status already say it, so it is stored once, not per row.
fn envelope_head(uuid: &str, node: &str, status: &str) -> String {
    let text = |s: &str| serde_json::to_string(s).expect("a string always serializes");
    format!(
        r#"{{"v":{},"uuid":{},"node":{},"status":{},"#,
        crate::protocol::PROTOCOL_VERSION,
        text(uuid),
        text(node),
        text(status)
    )
}

/// A `results` row, compactly: `[ROW_V1][received_ms, 8 bytes LE][status
/// length][status][form][result]`, the result without the head that the key
/// and status repeat when it has that head. Byte for byte what was received
/// comes back (a signed result must still verify).
fn encode_result(uuid: &str, row: &NodeResultRef) -> Vec<u8> {
    let Ok(status_len) = u8::try_from(row.status.len()) else {
        return encode(row); // no status is that long; the JSON row still reads back
    };
    let text = row.result.get();
    let head = envelope_head(uuid, row.node, row.status);
    let (form, rest) = match text.strip_prefix(head.as_str()) {
        Some(rest) => (RESULT_HEADLESS, rest),
        None => (RESULT_AS_IS, text),
    };
    let mut out = Vec::with_capacity(11 + row.status.len() + rest.len());
    out.push(ROW_V1);
    out.extend_from_slice(&row.received_ms.to_le_bytes());
    out.push(status_len);
    out.extend_from_slice(row.status.as_bytes());
    out.push(form);
    out.extend_from_slice(rest.as_bytes());
    out
}

/// Read a `results` row of either format.
fn decode_result(bytes: &[u8], uuid: &str, node: &str) -> Result<NodeResult> {
    let Some((&ROW_V1, rest)) = bytes.split_first() else {
        return decode(bytes, uuid);
    };
    let corrupt = || StoreError::Corrupt {
        uuid: uuid.to_owned(),
        source: serde::de::Error::custom("truncated result row"),
    };
    let (ms, rest) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let (&len, rest) = rest.split_first().ok_or_else(corrupt)?;
    let (status, rest) = rest.split_at_checked(len.into()).ok_or_else(corrupt)?;
    let status = std::str::from_utf8(status).map_err(|_| corrupt())?;
    let (&form, rest) = rest.split_first().ok_or_else(corrupt)?;
    let result = match form {
        RESULT_HEADLESS => {
            let mut text = envelope_head(uuid, node, status).into_bytes();
            text.extend_from_slice(rest);
            decode(&text, uuid)?
        }
        _ => decode(rest, uuid)?,
    };
    Ok(NodeResult {
        node: node.to_owned(),
        status: status.to_owned(),
        received_ms: u64::from_le_bytes(*ms),
        result,
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON values with string keys always serialize")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], uuid: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        uuid: uuid.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn new_job(uuid: &str, created_ms: u64, nodes: &[&str]) -> StoreEvent {
        StoreEvent::NewJob {
            uuid: uuid.into(),
            created_ms,
            request: json!({"cmd": "status", "service": "sshd", "topic": "any"}),
            expected: nodes.iter().map(|n| n.to_string()).collect(),
            client: Some("smgr1 client alice 0123".into()),
        }
    }

    fn result(uuid: &str, node: &str, status: &str, rc: i64) -> StoreEvent {
        StoreEvent::Result {
            uuid: uuid.into(),
            node: node.into(),
            status: status.into(),
            received_ms: 2000,
            result: serde_json::value::to_raw_value(
                &json!({"node": node, "returncode": rc, "stdout": "sshd is running\n"}),
            )
            .unwrap(),
        }
    }

    fn no_response(uuid: &str, node: &str) -> StoreEvent {
        let (uuid, node) = (uuid.into(), node.into());
        StoreEvent::NoResponse {
            uuid,
            node,
            at_ms: 3000,
        }
    }

    fn finished(uuid: &str, at_ms: u64) -> StoreEvent {
        StoreEvent::Finished {
            uuid: uuid.into(),
            at_ms,
        }
    }

    fn temp_store() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("state/jobs.redb")).unwrap();
        (dir, store)
    }

    #[test]
    fn round_trip_with_merge_rules() {
        let (_dir, store) = temp_store();
        let u = "f569796669df4bf6982dd14c704900a0";
        store.apply(&[new_job(u, 1000, &["a", "b", "c"])]).unwrap();
        store
            .apply(&[
                result(u, "b", "failed", 1),
                result(u, "a", "ok", 0),
                result(u, "a", "ok", 0),     // exact duplicate: ignored
                result(u, "a", "failed", 3), // differs: dropped, counted
                no_response(u, "a"),         // has a result: ignored
                no_response(u, "c"),
                finished(u, 3000),
            ])
            .unwrap();
        // A late result replaces the placeholder; a late Finished changes nothing.
        store.apply(&[result(u, "c", "ok", 0)]).unwrap();
        store.apply(&[finished(u, 9000)]).unwrap();

        let job = store.get(u).unwrap().unwrap();
        assert_eq!(job.created_ms, 1000);
        assert_eq!(job.request["service"], "sshd");
        assert_eq!(job.expected, ["a", "b", "c"]);
        assert_eq!(job.finished_ms, Some(3000));
        assert_eq!(job.conflicts, 1);
        let got: Vec<_> = job.results.iter().map(|r| (&*r.node, &*r.status)).collect();
        assert_eq!(got, [("a", "ok"), ("b", "failed"), ("c", "ok")]);
        assert_eq!(job.results[0].result["returncode"], 0);

        let s = &store.list(10).unwrap()[0];
        assert_eq!((s.expected_count, s.answered_count), (3, 3));
        assert_eq!(
            s.status_counts,
            BTreeMap::from([("failed".into(), 1), ("ok".into(), 2)])
        );
        assert!(store.get("0123").unwrap().is_none());
    }

    #[test]
    fn results_for_unknown_job_are_kept() {
        let (_dir, store) = temp_store();
        store.apply(&[result("late", "a", "ok", 0)]).unwrap();
        let job = store.get("late").unwrap().unwrap();
        assert_eq!((job.request.clone(), job.created_ms), (Value::Null, 2000));
        assert_eq!(job.results.len(), 1);
        assert_eq!(store.list(5).unwrap()[0].uuid, "late");
        // A NewJob arriving afterwards completes the stub and moves it in time.
        store.apply(&[new_job("late", 500, &["a"])]).unwrap();
        let s = store.list(5).unwrap();
        assert_eq!((s.len(), s[0].created_ms, s[0].answered_count), (1, 500, 1));
        assert_eq!(store.expire(501).unwrap(), 1);
    }

    #[test]
    fn write_lag_and_size_for_the_metrics() {
        let (_dir, store) = temp_store();
        assert!(store.size_bytes().unwrap() > 0);
        assert_eq!(store.unsynced_since(), None);
        // A lazy commit awaits its fsync, and a later one does not make the
        // oldest unsynced commit younger. The flusher syncs once a second: if
        // it ran in between, try again.
        let observed = (0..5).any(|i| {
            let before = std::time::Instant::now();
            let uuid = format!("j{i}");
            store.apply(&[new_job(&uuid, 1, &["a"])]).unwrap();
            let Some(since) = store.unsynced_since() else {
                return false;
            };
            store.apply(&[result(&uuid, "a", "ok", 0)]).unwrap();
            since >= before && store.unsynced_since() == Some(since)
        });
        assert!(observed, "unsynced_since never reported a lazy commit");
        store.flush().unwrap();
        assert_eq!(store.unsynced_since(), None);
    }

    #[test]
    fn list_is_newest_first_and_limited() {
        let (_dir, store) = temp_store();
        let events: Vec<_> = [30, 10, 50, 20, 40]
            .iter()
            .map(|&t| new_job(&format!("job{t}"), t, &[]))
            .collect();
        store.apply(&events).unwrap();
        let uuids: Vec<_> = store.list(3).unwrap().into_iter().map(|s| s.uuid).collect();
        assert_eq!(uuids, ["job50", "job40", "job30"]);
        assert_eq!(store.list(100).unwrap().len(), 5);
    }

    #[test]
    fn expire_deletes_old_jobs_and_their_results() {
        let (_dir, store) = temp_store();
        for (u, t) in [("old1", 100), ("old2", 200), ("new", 300)] {
            store
                .apply(&[
                    new_job(u, t, &["a", "b"]),
                    result(u, "a", "ok", 0),
                    result(u, "b", "ok", 0),
                ])
                .unwrap();
        }
        assert_eq!(store.expire(300).unwrap(), 2);
        assert!(store.get("old1").unwrap().is_none());
        assert!(store.get("old2").unwrap().is_none());
        assert_eq!(store.get("new").unwrap().unwrap().results.len(), 2);
        assert_eq!(store.list(10).unwrap().len(), 1);
        let tx = store.db.begin_read().unwrap();
        assert_eq!(tx.open_table(RESULTS).unwrap().iter().unwrap().count(), 2);
        assert_eq!(tx.open_table(PROGRESS).unwrap().iter().unwrap().count(), 1);
        assert_eq!(store.expire(300).unwrap(), 0);
    }

    #[test]
    fn survives_reopen_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        let store = RedbStore::open(&path).unwrap();
        store.apply(&[new_job("j", 1, &["a"])]).unwrap();
        store.apply(&[result("j", "a", "ok", 0)]).unwrap(); // lazy commit
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.get("j").unwrap().unwrap().results.len(), 1);
    }

    #[test]
    fn second_open_says_in_use() {
        let (dir, _store) = temp_store();
        let err = RedbStore::open(&dir.path().join("state/jobs.redb"))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        assert!(err.to_string().contains("another service-mgrd"), "{err}");
    }

    /// jobs.redb (every request and output) was created 0644: readable by
    /// every user of the manager's host.
    #[test]
    fn store_file_is_private_and_an_open_one_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let (dir, store) = temp_store();
        let path = dir.path().join("state/jobs.redb");
        assert_eq!(mode(&path), 0o600);
        drop(store);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_store, note) = RedbStore::open_recovering(&path).unwrap();
        assert_eq!((mode(&path), note), (0o600, None));
    }

    #[test]
    fn unwritable_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let path = file.join("jobs.redb"); // parent is a file: fails even as root
        let err = RedbStore::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        assert!(err.to_string().contains("state_dir"), "{err}");
    }

    #[test]
    fn results_are_stored_without_their_head_and_read_back_byte_for_byte() {
        let (_dir, store) = temp_store();
        let u = "7b933f239f6f4ab8b1d9268e70b1e9f4";
        let ours = format!(
            r#"{{"v":2,"uuid":"{u}","node":"we\"b1","status":"ok","msg":"signed","auth":{{"body":"{{\"uuid\":1}}","sig":"AA=="}}}}"#
        );
        let theirs = format!(r#"{{"msg":"Executed","result":{{"node":"db1"}},"uuid":"{u}"}}"#);
        let raw = |t: &str| serde_json::value::RawValue::from_string(t.to_owned()).unwrap();
        let ev = |node: &str, t: &str| StoreEvent::Result {
            uuid: u.into(),
            node: node.into(),
            status: "ok".into(),
            received_ms: 7,
            result: raw(t),
        };
        store
            .apply(&[
                new_job(u, 1, &["we\"b1", "db1"]),
                ev("we\"b1", &ours),
                ev("db1", &theirs),
            ])
            .unwrap();
        let job = store.get(u).unwrap().unwrap();
        let got: Vec<_> = job.results.iter().map(|r| r.result.to_string()).collect();
        assert_eq!(got, [theirs.clone(), ours.clone()]);
        assert_eq!(
            (job.results[1].received_ms, &*job.results[1].status),
            (7, "ok")
        );
        // The head is not stored, so the row is smaller than the result alone.
        let tx = store.db.begin_read().unwrap();
        let t = tx.open_table(RESULTS).unwrap();
        let row = t.get((u, "we\"b1")).unwrap().unwrap();
        assert!(row.value().len() < ours.len(), "{}", row.value().len());
        // Rows of the earlier JSON form still read.
        let old = serde_json::to_vec(&json!({"node": "db1", "status": "failed",
            "received_ms": 3, "result": {"returncode": 1}}))
        .unwrap();
        let r = decode_result(&old, u, "db1").unwrap();
        assert_eq!((&*r.status, r.received_ms), ("failed", 3));
        assert_eq!(r.result["returncode"], 1);
        assert!(decode_result(&[ROW_V1, 1, 2], u, "db1").is_err());
    }

    #[test]
    fn trim_to_removes_the_oldest_jobs_until_the_data_fits() {
        let (_dir, store) = temp_store();
        let stdout = "x".repeat(900);
        for i in 0..300u64 {
            let uuid = format!("job{i:04}");
            let mut events = vec![new_job(&uuid, 1000 + i, &[])];
            for n in 0..10 {
                let node = format!("n{n}");
                events.push(StoreEvent::Result {
                    uuid: uuid.clone(),
                    status: "ok".into(),
                    received_ms: 2000,
                    result: serde_json::value::to_raw_value(&json!({"stdout": stdout})).unwrap(),
                    node,
                });
            }
            store.apply(&events).unwrap();
        }
        let before = store.used_bytes().unwrap();
        assert!(before > 3 << 20, "{before}");
        // Under the cap: nothing goes.
        assert_eq!(store.trim_to(1 << 30).unwrap(), 0);
        let cap = before / 2;
        let removed = store.trim_to(cap).unwrap();
        assert!(removed > 100 && removed < 300, "{removed}");
        let after = store.used_bytes().unwrap();
        assert!(after <= cap, "{after} > {cap}");
        // The newest are kept, the oldest went.
        assert!(store.get("job0299").unwrap().is_some());
        assert!(store.get("job0000").unwrap().is_none());
        let left = store.list(1000).unwrap();
        assert_eq!(left.len(), 300 - removed);
        assert_eq!(left.last().unwrap().uuid, format!("job{removed:04}"));
    }

    #[test]
    fn a_panic_in_the_store_is_an_error_of_that_call() {
        let path = Path::new("/var/lib/service-mgr/jobs.redb");
        let err = guarded("reading a job", path, || -> Result<()> {
            unreachable!("btree_iters")
        })
        .unwrap_err();
        assert!(matches!(err, StoreError::Panicked { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("reading a job") && text.contains("btree_iters"),
            "{text}"
        );
        assert!(
            text.contains("move /var/lib/service-mgr/jobs.redb aside"),
            "{text}"
        );
        assert!(is_damage(&err));
    }

    #[test]
    fn a_file_that_is_not_a_store_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        std::fs::write(&path, vec![0x5a; 20000]).unwrap();
        let (store, note) = RedbStore::open_recovering(&path).unwrap();
        let note = note.unwrap();
        assert!(note.contains("moved it aside"), "{note}");
        store.apply(&[new_job("j", 1, &["a"])]).unwrap();
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("jobs.redb.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            std::fs::read(dir.path().join(&aside[0])).unwrap().len(),
            20000
        );
        // A sound store opens with nothing to say.
        drop(store);
        let (store, note) = RedbStore::open_recovering(&path).unwrap();
        assert_eq!(note, None);
        assert!(store.get("j").unwrap().is_some());
    }

    /// Runs itself as a child that aborts after a flush: what was flushed must survive.
    #[test]
    fn flushed_results_survive_a_crash() {
        if let Some(path) = std::env::var_os("JOBSTORE_CRASH_CHILD") {
            let store = RedbStore::open(Path::new(&path)).unwrap();
            store.apply(&[new_job("j", 1, &["a", "b"])]).unwrap();
            store.apply(&[result("j", "a", "ok", 0)]).unwrap();
            store.flush().unwrap();
            store.apply(&[result("j", "b", "ok", 0)]).unwrap(); // may be lost
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        let name = format!("{}::flushed_results_survive_a_crash", module_path!());
        let name = name.split_once("::").unwrap().1; // test names omit the crate
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1"])
            .env("JOBSTORE_CRASH_CHILD", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child should have aborted");
        let store = RedbStore::open(&path).unwrap();
        let job = store.get("j").unwrap().unwrap();
        assert_eq!(job.results[0].node, "a");
    }
}
