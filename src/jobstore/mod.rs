//! The manager's job store: every job (who signed it, what, which targets,
//! the expected nodes) and every node's result, so that late results are not
//! lost, past jobs can be shown and the store survives a restart.
//!
//! One interface, [`JobStore`], two implementations:
//! - [`redb`]: the default, an embedded crash-safe database in `state_dir`
//!   (`jobs.redb`), for one manager;
//! - [`postgres`]: `job_store = "postgres://..."`, a database several managers
//!   share, so that any of them reads any job. Its writes go through a thread
//!   of its own with a bounded queue: the manager's loop never waits on the
//!   database (see that module for what happens while it is down).
//!
//! # Merge rules (both stores)
//! The first result of a node is kept. A repeated result equal to it (same
//! status and result) is ignored; a differing one is dropped too but counted
//! in [`JobRecord::conflicts`] (two agents using one node name, say). A
//! `NoResponse` is stored as a result with status [`NO_RESPONSE`], is replaced
//! by a real result that arrives later, and never replaces one. An event for
//! an unknown uuid creates a stub job (request `null`, created at the event's
//! time) that a later `NewJob` completes: a result is never lost silently.
//! A `NewJob` for a known uuid replaces its creation time, request, signer and
//! expected nodes; the first `Finished` time is kept.

pub mod postgres;
pub mod redb;

pub use self::postgres::PgStore;
pub use self::redb::{RedbStore, FLUSH_INTERVAL};

use serde_json::value::RawValue;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

/// Status of the placeholder result stored for a `NoResponse` event.
pub const NO_RESPONSE: &str = "no_response";

/// What the manager does with a job store; see the module doc for the rules
/// both implementations follow.
pub trait JobStore: Send {
    /// Record a batch of events (the redb store commits them at once; the
    /// PostgreSQL store queues them for its writer and never blocks).
    fn apply(&self, events: &[StoreEvent]) -> Result<()>;

    /// One page of a job: its results (ordered by node) from `offset` on, at
    /// most `limit` of them and, past the first, no more than `max_bytes` of
    /// stored results. With the offset of the next page, if there is one.
    fn get_page(
        &self,
        uuid: &str,
        offset: usize,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<(JobRecord, Option<usize>)>>;

    /// The jobs after the newest `offset`, newest first, at most `limit`;
    /// with the offset of the next page, if there is one.
    fn list_page(&self, offset: usize, limit: usize) -> Result<(Vec<JobSummary>, Option<usize>)>;

    /// Delete the jobs created before `older_than_ms` with their results;
    /// returns how many jobs went (the PostgreSQL store does it on its
    /// writer thread, logs the count and returns 0).
    fn expire(&self, older_than_ms: u64) -> Result<usize>;

    /// Keep the store under `max_bytes` (`job_store_max_mb`), the oldest jobs
    /// first; returns how many went. Only the embedded store has a cap.
    fn trim_to(&self, max_bytes: u64) -> Result<usize>;

    /// Make everything applied so far durable (redb: fsync; PostgreSQL: wait,
    /// a few seconds at most, for the writer's queue to drain).
    fn flush(&self) -> Result<()>;

    /// Whether everything applied so far is durable, without waiting on a
    /// database: the manager acknowledges results to their agents only then.
    /// `Ok(false)`: not yet (ask again later); an error: some may be lost
    /// (their agents must send them again). The embedded store syncs here
    /// (its flusher has nearly always done it already).
    fn flush_nowait(&self) -> Result<bool> {
        self.flush().map(|()| true)
    }

    /// Since when applied events are not durable yet (`None`: all are).
    fn unsynced_since(&self) -> Option<Instant>;

    /// The store's size on disk, as last known.
    fn size_bytes(&self) -> std::io::Result<u64>;

    /// What is wrong with writing right now, for `manager.status` (the
    /// PostgreSQL store: unreachable since when, events queued and dropped).
    fn status(&self) -> Option<String> {
        None
    }

    /// One job with all its results, or `None` if the store does not know it.
    fn get(&self, uuid: &str) -> Result<Option<JobRecord>> {
        Ok(self
            .get_page(uuid, 0, usize::MAX, usize::MAX)?
            .map(|(record, _)| record))
    }

    /// `manager.history`: the answers of the jobs `filter` keeps, newest job
    /// first (nodes in order), after the first `offset`, at most `limit`;
    /// with the offset of the next page, if there is one.
    fn history(
        &self,
        filter: &HistoryFilter,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, Option<usize>)>;

    /// Summaries of the `limit` newest jobs, newest first.
    fn list(&self, limit: usize) -> Result<Vec<JobSummary>> {
        Ok(self.list_page(0, limit)?.0)
    }
}

/// Where the manager keeps its jobs (`job_store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded store, a file (`state_dir/jobs.redb`).
    Redb(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Redb(p) => write!(f, "{}", p.display()),
            Location::Postgres(url) => f.write_str(&self::postgres::redact(url)),
        }
    }
}

/// Open the store at `at`: the embedded one is checked and repaired (see
/// [`RedbStore::open_recovering`]); PostgreSQL is connected and migrated, or,
/// when it cannot be reached, started anyway (its writer keeps trying and
/// queues the events meanwhile). Returns the store and, when something was
/// wrong, what (for the log and `manager.status`).
pub fn open(at: &Location, log: &slog::Logger) -> Result<(Box<dyn JobStore>, Option<String>)> {
    match at {
        Location::Redb(path) => {
            let (store, note) = RedbStore::open_recovering(path)?;
            Ok((Box::new(store), note))
        }
        Location::Postgres(url) => {
            let store = PgStore::open(url, log)?;
            Ok((Box::new(store), None))
        }
    }
}

/// Why the job store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory or file cannot be created or opened.
    #[error("cannot open job store {} (set state_dir to a writable directory)", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another `RedbStore` here) holds the file's lock.
    #[error("job store {} is in use: another service-mgrd seems to be running with the same state_dir", path.display())]
    InUse { path: PathBuf },
    /// The file is not a redb database, is damaged or needs an upgrade.
    #[error("cannot open job store {}", path.display())]
    Database {
        path: PathBuf,
        #[source]
        source: Box<::redb::DatabaseError>,
    },
    /// A stored row is not the JSON this module writes.
    #[error("job store holds an unreadable record of job {uuid}")]
    Corrupt {
        uuid: String,
        #[source]
        source: serde_json::Error,
    },
    /// Any other database failure (I/O, full disk...).
    #[error(transparent)]
    Db(Box<::redb::Error>),
    /// PostgreSQL refused or failed an operation (or cannot be reached).
    #[error("PostgreSQL job store {url}: cannot {what}")]
    Postgres {
        url: String,
        what: &'static str,
        #[source]
        source: Box<::postgres::Error>,
    },
    /// The PostgreSQL store is known to be unreachable: reads fail at once
    /// instead of waiting on it.
    #[error(
        "PostgreSQL job store {url} is unavailable ({why}); service-mgrd retries every second"
    )]
    Unavailable { url: String, why: String },
    /// The database was migrated by a newer service-mgr.
    #[error("PostgreSQL job store {url} has schema version {found}, newer than this service-mgr's {ours}: upgrade service-mgrd")]
    Newer { url: String, found: i32, ours: i32 },
    /// The database library panicked on the file's contents (a damaged file);
    /// the panic was caught and only this operation failed.
    #[error("the job store failed while {what}: {message} (the file may be damaged: stop service-mgrd and move {} aside)", path.display())]
    Panicked {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// Result of the store's operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub use crate::protocol::mgmt::{HistoryEntry, HistoryFilter, JobRecord, JobSummary, NodeResult};

/// A request's field as text (`""` when absent: a stub's `null` request).
pub(crate) fn request_text(request: &Value, field: &str) -> String {
    request
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// What [`RedbStore::stats`] counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub jobs: u64,
    pub results: u64,
    pub result_bytes: u64,
    /// Bytes in use in the file (data, indexes, fragmentation); the rest of
    /// the file is free pages that later writes reuse.
    pub live_bytes: u64,
}

/// A change to the store; the manager batches those of one poll-loop round.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    /// The manager dispatched a request.
    NewJob {
        uuid: String,
        created_ms: u64,
        request: Value,
        expected: Vec<String>,
        /// Who signed it: the client's public key line (`None`: unsigned).
        client: Option<String>,
    },
    /// A node answered (`result` is the agent's whole result message, as
    /// received: stored without being decoded or re-encoded).
    Result {
        uuid: String,
        node: String,
        status: String,
        received_ms: u64,
        result: Box<RawValue>,
    },
    /// An expected node did not answer in time.
    NoResponse {
        uuid: String,
        node: String,
        at_ms: u64,
    },
    /// The manager stopped waiting for the job.
    Finished { uuid: String, at_ms: u64 },
}

impl StoreEvent {
    /// The job and the event's time (created, received or noticed).
    pub(crate) fn key(&self) -> (&str, u64) {
        match self {
            StoreEvent::NewJob {
                uuid,
                created_ms: t,
                ..
            }
            | StoreEvent::Result {
                uuid,
                received_ms: t,
                ..
            }
            | StoreEvent::NoResponse { uuid, at_ms: t, .. }
            | StoreEvent::Finished { uuid, at_ms: t } => (uuid, *t),
        }
    }
}
