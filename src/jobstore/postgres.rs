//! The PostgreSQL job store (`job_store = "postgres://user@host:port/db"`):
//! one database that several managers share, so that any manager reads any
//! job (`client --job`, `mgmt job`), and that people can query directly
//! through the documented views (`migrations/postgres/`).
//!
//! # Never waiting on the database
//! [`PgStore::apply`] only queues the events (a mutex held for a copy) and
//! wakes the writer thread, which owns one connection and commits each batch
//! in one transaction (a handful of statements whatever the batch's size).
//! While the database cannot be reached or refuses a write, the writer keeps
//! the events queued, up to [`QUEUE_MAX`] (past it the oldest go, counted),
//! logs it once, retries every [`RETRY_INTERVAL`], logs once more when it
//! writes again, and [`JobStore::status`] says for `manager.status` since when
//! and how many events wait or were dropped. Expiry (`job_retention`) also
//! runs on the writer.
//!
//! Reads (`client --job`, `mgmt job(s)`) run on two reader threads sharing a
//! small pool of connections (short connect and statement timeouts); the
//! caller waits for the answer [`READ_WAIT`] at most, then gets an error
//! saying so. While the writer knows the database to be down they fail at
//! once instead of trying. So a read blocks the manager's loop for at most
//! `READ_WAIT`, not for as long as the database takes.
//!
//! # Consistency
//! The writer's session commits with `synchronous_commit = off`, as the
//! embedded store commits lazily: a commit does not wait for the server's
//! WAL flush, and a crash of the database server may lose the last fraction
//! of a second of job events (never tearing them). With one multi-row
//! statement per table and batch, and no foreign key to check per result, the
//! writer takes about 80 % of the embedded store's results/s (bench
//! `jobstore_postgres`, BENCHMARKS.md).
//!
//! Events reach the database a moment after they happen (the manager batches
//! them for up to 100 ms, then the writer's round trip): a read just after a
//! result may not show it yet. A batch stays queued until its transaction
//! committed, so every event is written at least once; writing one twice (a
//! connection lost between the commit and its answer) changes nothing, the
//! writes being upserts, except that a conflict may be counted twice. Two managers writing the same
//! node's result of one job (a failover) is settled by the database: the
//! first real result stays (`ON CONFLICT`), though the `conflicts` count may
//! then miss one.

use super::{
    HistoryEntry, HistoryFilter, JobRecord, JobStore, JobSummary, NodeResult, Result, StoreError,
    StoreEvent, NO_RESPONSE,
};
use postgres::{Client, NoTls, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use serde_json::Value;
use slog::{error, info, warn, Logger};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most events queued for the writer; beyond, the oldest are dropped.
pub const QUEUE_MAX: usize = 100_000;
/// Events the writer commits in one transaction at most.
const WRITE_BATCH: usize = 5000;
/// How often the writer retries a database it cannot write.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Connecting may take this long, on the writer and for a read.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A read statement may run this long (server side).
const READ_STATEMENT_TIMEOUT_MS: u64 = 2000;
/// The longest a caller (the manager's loop) waits for a read.
pub const READ_WAIT: Duration = Duration::from_secs(1);
/// Reader threads, and reads waiting for one at most.
const READERS: usize = 2;
const READS_QUEUED_MAX: usize = 8;
/// A write statement may run this long (server side).
const WRITE_STATEMENT_TIMEOUT_MS: u64 = 30_000;
/// Unacknowledged data (a host that vanished) breaks a connection after this long.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping manager waits for the queue to drain.
const FLUSH_WAIT: Duration = Duration::from_secs(5);
/// How often the writer reads the tables' size for the metrics.
const SIZE_INTERVAL: Duration = Duration::from_secs(30);
/// Key of the advisory lock the migrations run under.
const MIGRATION_LOCK: i64 = 0x5345_5256_4d47_5231; // "SERVMGR1"

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_keys.sql")),
];

/// The URL without its password, for logs and messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rfind('@') {
        Some(at) => rest.split_at(at),
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{host}"),
        None => url.to_owned(),
    }
}

/// What the manager and the writer share.
#[derive(Default)]
struct Queue {
    events: VecDeque<StoreEvent>,
    /// When the oldest event not yet committed was queued.
    oldest: Option<Instant>,
    /// Events the writer took and has not committed yet.
    in_flight: usize,
    /// Events dropped because the queue was full, since the last success.
    dropped: u64,
    /// Events dropped since the store opened.
    dropped_total: u64,
    /// Why the database cannot be written, since when (unix ms).
    failing: Option<(String, u64)>,
    /// Expire jobs created before this (unix ms), on the next round.
    expire_before: Option<u64>,
    /// The tables' size as last read.
    size: u64,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Plain data, left consistent at every unlock: a panic cannot tear it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The open PostgreSQL store.
pub struct PgStore {
    url: String,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    /// Reads for the reader threads; dropping it stops them.
    reads: Option<mpsc::SyncSender<Read>>,
    /// `dropped_total` at the last `flush_nowait`.
    dropped_seen: AtomicU64,
}

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
/// A read, run by a reader thread on a pooled connection.
type Read = Box<dyn FnOnce(&Pool) + Send>;

/// The connection settings of `url`, with our timeouts.
pub(crate) fn config(
    url: &str,
    statement_timeout_ms: u64,
    synchronous: bool,
) -> Result<postgres::Config> {
    let mut config: postgres::Config = url.parse().map_err(|e| StoreError::Postgres {
        url: redact(url),
        what: "parse the job_store URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
        source: Box::new(e),
    })?;
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .application_name("service-mgrd")
        .options(&format!(
            "-c statement_timeout={statement_timeout_ms} -c synchronous_commit={}",
            if synchronous { "on" } else { "off" }
        ));
    Ok(config)
}

impl PgStore {
    /// Connect, apply the migrations the database lacks and start the
    /// writer. A database that cannot be reached is not an error (the
    /// writer keeps trying, and says so): only a URL that does not parse, or
    /// a database migrated by a newer service-mgr, is.
    pub fn open(url: &str, log: &Logger) -> Result<PgStore> {
        let shown = redact(url);
        let log = log.new(slog::o!("job_store" => shown.clone()));
        // The writer commits asynchronously, as the embedded store commits
        // lazily: a crash of the database server may lose its last fraction
        // of a second of events (never tearing them); a commit no longer
        // waits for the server's WAL flush.
        let write_config = config(url, WRITE_STATEMENT_TIMEOUT_MS, false)?;
        let read_config = config(url, READ_STATEMENT_TIMEOUT_MS, true)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        // The first connection here, so that a database we are too old for
        // stops the start, and the tables exist before the first read.
        let first = match connect(&write_config, &shown) {
            Ok(client) => {
                info!(log, "PostgreSQL job store connected and migrated");
                Some(client)
            }
            Err(e @ StoreError::Newer { .. }) => return Err(e),
            Err(e) => {
                let why = reason(&e);
                error!(log, "PostgreSQL job store unreachable at start: routing goes on, job events are queued in memory until it answers";
                    "error" => &why, "queue_max" => QUEUE_MAX);
                shared.lock().failing = Some((why, crate::clock::now_ms()));
                None
            }
        };
        let pool: Pool = r2d2::Pool::builder()
            .max_size(READERS as u32)
            .min_idle(Some(0))
            .connection_timeout(CONNECT_TIMEOUT)
            .build_unchecked(PostgresConnectionManager::new(read_config, NoTls));
        let (reads, queued) = mpsc::sync_channel::<Read>(READS_QUEUED_MAX);
        let queued = Arc::new(Mutex::new(queued));
        for i in 0..READERS {
            let (pool, queued) = (pool.clone(), queued.clone());
            std::thread::Builder::new()
                .name(format!("jobstore-pg-read{i}"))
                .spawn(move || loop {
                    let next = queued.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match next {
                        Ok(read) => read(&pool),
                        Err(_) => return,
                    }
                })
                .map_err(|e| StoreError::Unavailable {
                    url: shown.clone(),
                    why: format!("cannot start its reader threads: {e}"),
                })?;
        }
        let writer = Writer {
            config: write_config,
            url: shown.clone(),
            shared: shared.clone(),
            log,
            client: first,
            manager: crate::host::HostInfo::read().node,
            last_size: None,
            said_full: false,
        };
        let writer = std::thread::Builder::new()
            .name("jobstore-pg".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Unavailable {
                url: shown.clone(),
                why: format!("cannot start its writer thread: {e}"),
            })?;
        Ok(PgStore {
            url: shown,
            shared,
            writer: Some(writer),
            reads: Some(reads),
            dropped_seen: AtomicU64::new(0),
        })
    }

    /// Run `f` on a reader thread with a pooled connection, waiting for it
    /// READ_WAIT at most; fails at once while the writer knows the database
    /// to be down.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client, &str) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let unavailable = |why: String| StoreError::Unavailable {
            url: self.url.clone(),
            why,
        };
        if let Some((why, _)) = &self.shared.lock().failing {
            return Err(unavailable(why.clone()));
        }
        let (answer, answered) = mpsc::sync_channel(1);
        let url = self.url.clone();
        let read: Read = Box::new(move |pool: &Pool| {
            let result = match pool.get() {
                Ok(mut c) => f(&mut c, &url),
                Err(e) => Err(StoreError::Unavailable {
                    url,
                    why: format!("cannot connect: {e}"),
                }),
            };
            // The caller may have given up waiting: nobody to tell then.
            let _ = answer.send(result);
        });
        let Some(reads) = &self.reads else {
            return Err(unavailable("stopping".into()));
        };
        reads.try_send(read).map_err(|_| {
            unavailable(format!(
                "{READS_QUEUED_MAX} reads already wait for the database"
            ))
        })?;
        answered.recv_timeout(READ_WAIT).unwrap_or_else(|_| {
            Err(unavailable(format!(
                "no answer within {} ms",
                READ_WAIT.as_millis()
            )))
        })
    }

    /// Events queued or being written.
    pub fn queued(&self) -> usize {
        let q = self.shared.lock();
        q.events.len() + q.in_flight
    }
}

impl JobStore for PgStore {
    fn apply(&self, events: &[StoreEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut q = self.shared.lock();
        q.oldest.get_or_insert_with(Instant::now);
        q.events.extend(events.iter().cloned());
        let over = (q.events.len() + q.in_flight).saturating_sub(QUEUE_MAX);
        let over = over.min(q.events.len());
        if over > 0 {
            q.events.drain(..over);
            q.dropped += over as u64;
            q.dropped_total += over as u64;
        }
        drop(q);
        self.shared.wake.notify_all();
        Ok(())
    }

    fn get_page(
        &self,
        uuid: &str,
        offset: usize,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<(JobRecord, Option<usize>)>> {
        let uuid = uuid.to_owned();
        self.read(move |c, url| read_job(c, url, &uuid, offset, limit, max_bytes))
    }

    fn list_page(&self, offset: usize, limit: usize) -> Result<(Vec<JobSummary>, Option<usize>)> {
        self.read(move |c, url| read_list(c, url, offset, limit))
    }

    fn history(
        &self,
        filter: &HistoryFilter,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, Option<usize>)> {
        let filter = filter.clone();
        self.read(move |c, url| read_history(c, url, &filter, offset, limit))
    }

    fn expire(&self, older_than_ms: u64) -> Result<usize> {
        self.shared.lock().expire_before = Some(older_than_ms);
        self.shared.wake.notify_all();
        Ok(0)
    }

    fn trim_to(&self, _max_bytes: u64) -> Result<usize> {
        // job_store_max_mb is the embedded store's: the database's size is
        // its administrator's (see the README).
        Ok(0)
    }

    fn flush(&self) -> Result<()> {
        let deadline = Instant::now() + FLUSH_WAIT;
        let mut q = self.shared.lock();
        while !q.events.is_empty() || q.in_flight > 0 {
            if let Some((why, _)) = &q.failing {
                return Err(StoreError::Unavailable {
                    url: self.url.clone(),
                    why: format!(
                        "{why}; {} job events unwritten",
                        q.events.len() + q.in_flight
                    ),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StoreError::Unavailable {
                    url: self.url.clone(),
                    why: format!(
                        "{} job events still unwritten after {} s",
                        q.events.len() + q.in_flight,
                        FLUSH_WAIT.as_secs()
                    ),
                });
            }
            q = self
                .shared
                .wake
                .wait_timeout(q, left.min(Duration::from_millis(50)))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        Ok(())
    }

    fn flush_nowait(&self) -> Result<bool> {
        let q = self.shared.lock();
        let unavailable = |why: String| StoreError::Unavailable {
            url: self.url.clone(),
            why,
        };
        if let Some((why, _)) = &q.failing {
            return Err(unavailable(why.clone()));
        }
        // Events dropped since the last call: whatever was applied before
        // cannot be taken as written.
        let seen = self.dropped_seen.swap(q.dropped_total, Ordering::Relaxed);
        if q.dropped_total > seen {
            return Err(unavailable(format!(
                "{} job events dropped (the queue was full)",
                q.dropped_total - seen
            )));
        }
        Ok(q.events.is_empty() && q.in_flight == 0)
    }

    fn unsynced_since(&self) -> Option<Instant> {
        self.shared.lock().oldest
    }

    fn size_bytes(&self) -> std::io::Result<u64> {
        Ok(self.shared.lock().size)
    }

    fn status(&self) -> Option<String> {
        let q = self.shared.lock();
        let queued = q.events.len() + q.in_flight;
        let mut s = match &q.failing {
            Some((why, since)) => format!(
                "PostgreSQL job store {} cannot be written for {} s (since unix ms {since}): {why}; {queued} job events queued in memory (at most {QUEUE_MAX}); retrying every {} s",
                self.url,
                crate::clock::now_ms().saturating_sub(*since) / 1000,
                RETRY_INTERVAL.as_secs()
            ),
            None if q.dropped > 0 => format!("PostgreSQL job store {}", self.url),
            None => return None,
        };
        if q.dropped > 0 {
            s.push_str(&format!(
                "; {} job events dropped (the queue was full): those results are not in the store",
                q.dropped
            ));
        }
        Some(s)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// A job's page (see [`JobStore::get_page`]), in one read-only snapshot.
fn read_job(
    c: &mut Client,
    url: &str,
    uuid: &str,
    offset: usize,
    limit: usize,
    max_bytes: usize,
) -> Result<Option<(JobRecord, Option<usize>)>> {
    let err = |what| pg_err(url, what);
    let mut tx = c
        .build_transaction()
        .read_only(true)
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .map_err(err("read a job"))?;
    let Some(job) = tx
        .query_opt(
            "SELECT created_ms, request::text, expected::text, client, finished_ms, conflicts
             FROM service_mgr.jobs WHERE uuid = $1",
            &[&uuid],
        )
        .map_err(err("read a job"))?
    else {
        return Ok(None);
    };
    let total: i64 = tx
        .query_one(
            "SELECT count(*) FROM service_mgr.results WHERE uuid = $1",
            &[&uuid],
        )
        .map_err(err("read a job"))?
        .get(0);
    let offset_sql = i64::try_from(offset).unwrap_or(i64::MAX);
    let limit_sql = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let rows = tx
        .query(
            "SELECT node, status, received_ms, result FROM service_mgr.results
             WHERE uuid = $1 ORDER BY node OFFSET $2 LIMIT $3",
            &[&uuid, &offset_sql, &limit_sql],
        )
        .map_err(err("read a job's results"))?;
    let (mut results, mut bytes, mut next) = (Vec::new(), 0usize, None);
    for row in rows {
        let text: &str = row.get(3);
        if results.len() >= limit || (!results.is_empty() && bytes + text.len() > max_bytes) {
            next = Some(offset + results.len());
            break;
        }
        bytes += text.len();
        results.push(NodeResult {
            node: row.get(0),
            status: row.get(1),
            received_ms: ms(row.get(2)),
            result: json(text, uuid)?,
        });
    }
    let _ = tx.rollback();
    let request: Option<String> = job.get(1);
    let expected: String = job.get(2);
    Ok(Some((
        JobRecord {
            uuid: uuid.to_owned(),
            created_ms: ms(job.get(0)),
            request: request.map_or(Ok(Value::Null), |r| json(&r, uuid))?,
            expected: serde_json::from_str(&expected).map_err(|source| StoreError::Corrupt {
                uuid: uuid.to_owned(),
                source,
            })?,
            client: job.get(3),
            results,
            results_total: usize::try_from(total).unwrap_or(0),
            finished_ms: job.get::<_, Option<i64>>(4).map(ms),
            conflicts: u64::try_from(job.get::<_, i64>(5)).unwrap_or(0),
        },
        next,
    )))
}

/// A page of job summaries (see [`JobStore::list_page`]).
fn read_list(
    c: &mut Client,
    url: &str,
    offset: usize,
    limit: usize,
) -> Result<(Vec<JobSummary>, Option<usize>)> {
    let err = |what| pg_err(url, what);
    let offset_sql = i64::try_from(offset).unwrap_or(i64::MAX);
    let limit_sql = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "SELECT uuid, created_ms, request::text, jsonb_array_length(expected), client, finished_ms
             FROM service_mgr.jobs ORDER BY created_ms DESC, uuid DESC OFFSET $1 LIMIT $2",
            &[&offset_sql, &limit_sql],
        )
        .map_err(err("list jobs"))?;
    let next = (rows.len() > limit).then(|| offset.saturating_add(limit));
    let uuids: Vec<String> = rows.iter().take(limit).map(|r| r.get(0)).collect();
    let mut counts: HashMap<String, BTreeMap<String, usize>> = HashMap::new();
    for row in c
        .query(
            "SELECT uuid, status, count(*) FROM service_mgr.results
             WHERE uuid = ANY($1) GROUP BY uuid, status",
            &[&uuids],
        )
        .map_err(err("list jobs"))?
    {
        let n: i64 = row.get(2);
        counts
            .entry(row.get(0))
            .or_default()
            .insert(row.get(1), usize::try_from(n).unwrap_or(0));
    }
    let mut out = Vec::new();
    for row in rows.into_iter().take(limit) {
        let uuid: String = row.get(0);
        let request: Option<String> = row.get(2);
        let status_counts = counts.remove(&uuid).unwrap_or_default();
        let answered = status_counts
            .iter()
            .filter(|(s, _)| *s != NO_RESPONSE)
            .map(|(_, n)| n)
            .sum();
        out.push(JobSummary {
            created_ms: ms(row.get(1)),
            request: request.map_or(Ok(Value::Null), |r| json(&r, &uuid))?,
            expected_count: usize::try_from(row.get::<_, i32>(3)).unwrap_or(0),
            answered_count: answered,
            status_counts,
            finished_ms: row.get::<_, Option<i64>>(5).map(ms),
            client: row.get(4),
            uuid,
        });
    }
    Ok((out, next))
}

/// A page of the history (see [`JobStore::history`]).
fn read_history(
    c: &mut Client,
    url: &str,
    filter: &HistoryFilter,
    offset: usize,
    limit: usize,
) -> Result<(Vec<HistoryEntry>, Option<usize>)> {
    let offset_sql = i64::try_from(offset).unwrap_or(i64::MAX);
    let limit_sql = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let since = filter.since_ms.map(sql_ms);
    let rows = c
        .query(
            "SELECT j.uuid, j.created_ms, j.client, coalesce(j.request ->> 'cmd', ''),
                    coalesce(j.request ->> 'service', ''), coalesce(j.request ->> 'topic', ''),
                    r.node, r.status, r.received_ms
             FROM service_mgr.jobs j JOIN service_mgr.results r ON r.uuid = j.uuid
             WHERE ($1::text IS NULL OR r.node = $1)
               AND ($2::text IS NULL OR j.request ->> 'service' = $2)
               AND ($3::int8 IS NULL OR j.created_ms >= $3)
               AND ($4::text IS NULL OR j.client = $4 OR split_part(j.client, ' ', 3) = $4
                    OR split_part(j.client, ' ', 4) = $4)
             ORDER BY j.created_ms DESC, j.uuid DESC, r.node
             OFFSET $5 LIMIT $6",
            &[
                &filter.node,
                &filter.service,
                &since,
                &filter.client,
                &offset_sql,
                &limit_sql,
            ],
        )
        .map_err(pg_err(url, "read the history"))?;
    let next = (rows.len() > limit).then(|| offset.saturating_add(limit));
    let out = rows
        .into_iter()
        .take(limit)
        .map(|r| HistoryEntry {
            uuid: r.get(0),
            requested_ms: ms(r.get(1)),
            client: r.get(2),
            cmd: r.get(3),
            service: r.get(4),
            topic: r.get(5),
            node: r.get(6),
            status: r.get(7),
            received_ms: ms(r.get(8)),
        })
        .collect();
    Ok((out, next))
}

/// Milliseconds as PostgreSQL's bigint and back.
fn ms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
fn sql_ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json(text: &str, uuid: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        uuid: uuid.to_owned(),
        source,
    })
}

/// Why a store operation failed, on one line, without the store's URL (the
/// messages that show it say it once).
pub(crate) fn reason(e: &StoreError) -> String {
    match e {
        StoreError::Postgres { what, source, .. } => format!("cannot {what}: {}", chain(source)),
        StoreError::Unavailable { why, .. } => why.clone(),
        e => chain(e),
    }
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

/// Connect and bring the schema up to date.
pub(crate) fn connect(config: &postgres::Config, url: &str) -> Result<Client> {
    let err = |what| {
        move |e| StoreError::Postgres {
            url: url.to_owned(),
            what,
            source: Box::new(e),
        }
    };
    let mut client = config.connect(NoTls).map_err(err("connect"))?;
    let mut tx = client.transaction().map_err(err("migrate"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(err("migrate"))?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS service_mgr;
         CREATE TABLE IF NOT EXISTS service_mgr.schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .map_err(err(
        "create the schema service_mgr (the role needs CREATE on the database)",
    ))?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM service_mgr.schema_version",
            &[],
        )
        .map_err(err("migrate"))?
        .get(0);
    let ours = MIGRATIONS.last().map_or(0, |m| m.0);
    if found > ours {
        return Err(StoreError::Newer {
            url: url.to_owned(),
            found,
            ours,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql).map_err(err("apply a migration"))?;
        tx.execute(
            "INSERT INTO service_mgr.schema_version (version) VALUES ($1)",
            &[version],
        )
        .map_err(err("apply a migration"))?;
    }
    tx.commit().map_err(err("migrate"))?;
    Ok(client)
}

/// The writer thread's state.
struct Writer {
    config: postgres::Config,
    url: String,
    shared: Arc<Shared>,
    log: Logger,
    client: Option<Client>,
    manager: String,
    last_size: Option<Instant>,
    /// The queue's overflow was logged (until it drains).
    said_full: bool,
}

impl Writer {
    fn run(mut self) {
        loop {
            let (batch, expire, stop) = {
                let mut q = self.shared.lock();
                while q.events.is_empty() && q.expire_before.is_none() && !q.stop {
                    let idle = self.last_size.is_none_or(|t| t.elapsed() >= SIZE_INTERVAL);
                    if idle {
                        break;
                    }
                    q = self
                        .shared
                        .wake
                        .wait_timeout(q, SIZE_INTERVAL)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                let n = q.events.len().min(WRITE_BATCH);
                let batch: Vec<StoreEvent> = q.events.drain(..n).collect();
                q.in_flight = batch.len();
                (batch, q.expire_before.take(), q.stop)
            };
            if stop && batch.is_empty() && expire.is_none() {
                return;
            }
            let done = self.round(&batch, expire);
            let mut q = self.shared.lock();
            q.in_flight = 0;
            match done {
                Ok(()) => {
                    if let Some((why, _)) = q.failing.take() {
                        info!(self.log, "PostgreSQL job store writes again: queued job events are being written";
                            "queued" => q.events.len() + batch.len(), "dropped" => q.dropped, "was" => why);
                    }
                    if q.events.is_empty() {
                        if q.dropped > 0 {
                            warn!(self.log, "PostgreSQL job store caught up; job events were dropped while its queue was full";
                                "dropped" => q.dropped);
                        }
                        q.oldest = None;
                        q.dropped = 0;
                        self.said_full = false;
                    }
                }
                Err(e) => {
                    self.client = None;
                    // Back to the front, the oldest dropped beyond the cap.
                    for ev in batch.into_iter().rev() {
                        q.events.push_front(ev);
                    }
                    let over = q.events.len().saturating_sub(QUEUE_MAX);
                    if over > 0 {
                        q.events.drain(..over);
                        q.dropped += over as u64;
                        q.dropped_total += over as u64;
                    }
                    if let Some(cutoff) = expire {
                        q.expire_before.get_or_insert(cutoff);
                    }
                    let why = reason(&e);
                    if q.failing.is_none() {
                        error!(self.log, "PostgreSQL job store cannot be written: routing goes on, job events are queued in memory; retrying every second";
                            "error" => &why, "queued" => q.events.len(), "queue_max" => QUEUE_MAX);
                        q.failing = Some((why, crate::clock::now_ms()));
                    } else if let Some(f) = &mut q.failing {
                        f.0 = why;
                    }
                    if stop {
                        error!(self.log, "stopping with PostgreSQL job store events unwritten: they are lost";
                            "events" => q.events.len());
                        return;
                    }
                    say_full(&self.log, &mut self.said_full, &q);
                    drop(q);
                    self.pause();
                    continue;
                }
            }
            say_full(&self.log, &mut self.said_full, &q);
            let finished = q.events.is_empty();
            drop(q);
            // flush() waits on this condition too.
            self.shared.wake.notify_all();
            if stop && finished {
                return;
            }
        }
    }

    /// Wait RETRY_INTERVAL, or less if told to stop.
    fn pause(&self) {
        let q = self.shared.lock();
        if !q.stop {
            let _ = self.shared.wake.wait_timeout(q, RETRY_INTERVAL);
        }
    }

    /// Connect if need be, write a batch, expire, read the size.
    fn round(&mut self, batch: &[StoreEvent], expire: Option<u64>) -> Result<()> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(&self.config, &self.url)?);
        }
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        if !batch.is_empty() {
            let mut tx = client.transaction().map_err(pg_err(&self.url, "write"))?;
            write(&mut tx, batch, &self.manager).map_err(pg_err(&self.url, "write job events"))?;
            tx.commit()
                .map_err(pg_err(&self.url, "commit job events"))?;
        }
        if let Some(cutoff) = expire {
            // No foreign key ties the results to their job (checking one per
            // inserted row cost a third of the writer's time): they go first.
            let mut tx = client
                .transaction()
                .map_err(pg_err(&self.url, "expire old jobs"))?;
            tx.execute(
                "DELETE FROM service_mgr.results WHERE uuid IN
                     (SELECT uuid FROM service_mgr.jobs WHERE created_ms < $1)",
                &[&sql_ms(cutoff)],
            )
            .map_err(pg_err(&self.url, "expire old jobs"))?;
            let n = tx
                .execute(
                    "DELETE FROM service_mgr.jobs WHERE created_ms < $1",
                    &[&sql_ms(cutoff)],
                )
                .map_err(pg_err(&self.url, "expire old jobs"))?;
            tx.commit().map_err(pg_err(&self.url, "expire old jobs"))?;
            if n > 0 {
                info!(self.log, "expired old jobs from the job store"; "jobs" => n);
            }
        }
        if self.last_size.is_none_or(|t| t.elapsed() >= SIZE_INTERVAL) {
            self.last_size = Some(Instant::now());
            match client.query_one(
                "SELECT pg_total_relation_size('service_mgr.jobs') + pg_total_relation_size('service_mgr.results')",
                &[],
            ) {
                Ok(row) => self.shared.lock().size = ms(row.get(0)),
                Err(e) => warn!(self.log, "cannot read the job store's size"; "error" => chain(&e)),
            }
        }
        Ok(())
    }
}

/// Say once that the queue overflowed (`apply` drops the oldest events and
/// counts them; it has no logger and must not wait for one).
fn say_full(log: &Logger, said: &mut bool, q: &Queue) {
    if q.dropped > 0 && !*said {
        error!(log, "PostgreSQL job store queue full: dropping the oldest job events (their results are not stored)";
            "dropped" => q.dropped, "queue_max" => QUEUE_MAX);
        *said = true;
    }
}

fn pg_err<'a>(url: &'a str, what: &'static str) -> impl Fn(postgres::Error) -> StoreError + 'a {
    move |e| StoreError::Postgres {
        url: url.to_owned(),
        what,
        source: Box::new(e),
    }
}

/// A node's result as it will be written.
struct Row<'a> {
    status: &'a str,
    received_ms: u64,
    result: &'a str,
}

/// Whether a stored answer (`status`, `result`) and a new one say the same.
fn same_answer(status: &str, result: &str, new: &Row) -> bool {
    status == new.status
        && serde_json::from_str::<Value>(result).ok()
            == serde_json::from_str::<Value>(new.result).ok()
}

/// Write one batch: a fixed handful of statements, the events passed as arrays.
fn write(tx: &mut Transaction, batch: &[StoreEvent], manager: &str) -> Result<(), postgres::Error> {
    // New jobs, the last of a uuid winning.
    let mut jobs: BTreeMap<&str, &StoreEvent> = BTreeMap::new();
    // Every uuid touched, with its first event time, for the stubs.
    let mut stubs: BTreeMap<&str, u64> = BTreeMap::new();
    let mut finished: BTreeMap<&str, u64> = BTreeMap::new();
    for ev in batch {
        let (uuid, at) = ev.key();
        match ev {
            StoreEvent::NewJob { .. } => {
                jobs.insert(uuid, ev);
            }
            StoreEvent::Finished { .. } => {
                finished.entry(uuid).or_insert(at);
            }
            _ => {}
        }
        stubs.entry(uuid).or_insert(at);
    }
    if !jobs.is_empty() {
        let (mut u, mut t, mut r, mut e, mut c) = (vec![], vec![], vec![], vec![], vec![]);
        for ev in jobs.values() {
            if let StoreEvent::NewJob {
                uuid,
                created_ms,
                request,
                expected,
                client,
            } = ev
            {
                u.push(uuid.as_str());
                t.push(sql_ms(*created_ms));
                r.push(request.to_string());
                e.push(Value::from(expected.clone()).to_string());
                c.push(client.as_deref());
            }
        }
        tx.execute(
            "INSERT INTO service_mgr.jobs (uuid, created_ms, request, expected, client, manager)
             SELECT u, t, r::jsonb, e::jsonb, c, $6
             FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[]) AS x(u, t, r, e, c)
             ON CONFLICT (uuid) DO UPDATE SET created_ms = EXCLUDED.created_ms,
                 request = EXCLUDED.request, expected = EXCLUDED.expected,
                 client = EXCLUDED.client, manager = EXCLUDED.manager",
            &[&u, &t, &r, &e, &c, &manager],
        )?;
    }
    let (u, t): (Vec<&str>, Vec<i64>) = stubs.iter().map(|(u, t)| (*u, sql_ms(*t))).unzip();
    tx.execute(
        "INSERT INTO service_mgr.jobs (uuid, created_ms)
         SELECT * FROM unnest($1::text[], $2::int8[]) ON CONFLICT (uuid) DO NOTHING",
        &[&u, &t],
    )?;
    // The nodes' results: merged within the batch here, then against what
    // the database holds by the INSERT itself (a real result is never
    // replaced); only the rows it refused are read back, to count conflicts.
    {
        let mut rows: BTreeMap<(&str, &str), Row> = BTreeMap::new();
        let mut conflicts: BTreeMap<&str, i64> = BTreeMap::new();
        for ev in batch {
            let (uuid, node, new) = match ev {
                StoreEvent::Result {
                    uuid,
                    node,
                    status,
                    received_ms,
                    result,
                } => (
                    uuid.as_str(),
                    node.as_str(),
                    Row {
                        status,
                        received_ms: *received_ms,
                        result: result.get(),
                    },
                ),
                StoreEvent::NoResponse { uuid, node, at_ms } => (
                    uuid.as_str(),
                    node.as_str(),
                    Row {
                        status: NO_RESPONSE,
                        received_ms: *at_ms,
                        result: "null",
                    },
                ),
                _ => continue,
            };
            let prev = rows.get(&(uuid, node)).map(|r| (r.status, r.result));
            if let Some((status, result)) = prev {
                if status != NO_RESPONSE || new.status == NO_RESPONSE {
                    if new.status != NO_RESPONSE && !same_answer(status, result, &new) {
                        *conflicts.entry(uuid).or_default() += 1;
                    }
                    continue;
                }
            }
            rows.insert((uuid, node), new);
        }
        if !rows.is_empty() {
            let (mut u, mut n, mut s, mut t, mut r) = (vec![], vec![], vec![], vec![], vec![]);
            for ((uuid, node), row) in &rows {
                u.push(*uuid);
                n.push(*node);
                s.push(row.status);
                t.push(sql_ms(row.received_ms));
                r.push(row.result);
            }
            let written = tx.execute(
                "INSERT INTO service_mgr.results (uuid, node, status, received_ms, result)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[])
                 ON CONFLICT (uuid, node) DO UPDATE SET status = EXCLUDED.status,
                     received_ms = EXCLUDED.received_ms, result = EXCLUDED.result
                 WHERE service_mgr.results.status = 'no_response' AND EXCLUDED.status <> 'no_response'",
                &[&u, &n, &s, &t, &r],
            )?;
            // Some were refused: their nodes have a stored answer. Rare (a
            // repeated answer), so only then are the batch's real answers read
            // back: one that differs from what is stored is a conflict (those
            // just written read back as themselves).
            let real: Vec<(&str, &str)> = rows
                .iter()
                .filter(|(_, row)| row.status != NO_RESPONSE)
                .map(|(k, _)| *k)
                .collect();
            if usize::try_from(written).unwrap_or(0) < rows.len() && !real.is_empty() {
                let (u, n): (Vec<&str>, Vec<&str>) = real.into_iter().unzip();
                for prev in tx.query(
                    "SELECT r.uuid, r.node, r.status, r.result FROM service_mgr.results r
                     JOIN unnest($1::text[], $2::text[]) AS k(uuid, node)
                       ON r.uuid = k.uuid AND r.node = k.node",
                    &[&u, &n],
                )? {
                    let (uuid, node): (&str, &str) = (prev.get(0), prev.get(1));
                    // Rare (a repeated answer): a scan is fine.
                    let Some(((uuid, _), new)) =
                        rows.iter().find(|(k, _)| k.0 == uuid && k.1 == node)
                    else {
                        continue;
                    };
                    let (status, result): (&str, &str) = (prev.get(2), prev.get(3));
                    if status != NO_RESPONSE && !same_answer(status, result, new) {
                        *conflicts.entry(uuid).or_default() += 1;
                    }
                }
            }
        }
        if !conflicts.is_empty() {
            let (u, n): (Vec<&str>, Vec<i64>) = conflicts.into_iter().unzip();
            tx.execute(
                "UPDATE service_mgr.jobs j SET conflicts = j.conflicts + c.n
                 FROM unnest($1::text[], $2::int8[]) AS c(uuid, n) WHERE j.uuid = c.uuid",
                &[&u, &n],
            )?;
        }
    }
    if !finished.is_empty() {
        let (u, t): (Vec<&str>, Vec<i64>) =
            finished.into_iter().map(|(u, t)| (u, sql_ms(t))).unzip();
        tx.execute(
            "UPDATE service_mgr.jobs j SET finished_ms = f.t
             FROM unnest($1::text[], $2::int8[]) AS f(uuid, t)
             WHERE j.uuid = f.uuid AND j.finished_ms IS NULL",
            &[&u, &t],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_not_shown() {
        assert_eq!(
            redact("postgres://mgr:s3cr:et@db.example:5432/jobs"),
            "postgres://mgr:***@db.example:5432/jobs"
        );
        assert_eq!(
            redact("postgres://mgr@db.example/jobs"),
            "postgres://mgr@db.example/jobs"
        );
        assert_eq!(redact("postgresql://db/jobs"), "postgresql://db/jobs");
    }

    #[test]
    fn a_bad_url_is_an_error_naming_the_form() {
        let err = config("postgres://mgr@db:notaport/jobs", 1000, true).unwrap_err();
        assert!(err.to_string().contains("job_store URL"), "{err}");
        // The README's local-socket form.
        let local = config(
            "postgres://service_mgr@%2Frun%2Fpostgresql/service_mgr",
            1000,
            true,
        )
        .unwrap();
        assert!(
            matches!(&local.get_hosts()[0], postgres::config::Host::Unix(p) if p.as_os_str() == "/run/postgresql"),
            "{:?}",
            local.get_hosts()
        );
    }

    /// Nothing listens there: the store opens anyway, queues up to the cap,
    /// drops the oldest beyond it and says so; reads fail at once.
    #[test]
    fn an_unreachable_database_queues_to_the_cap_and_says_so() {
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let store = PgStore::open("postgres://mgr:secret@127.0.0.1:1/jobs", &log).unwrap();
        let events: Vec<StoreEvent> = (0..QUEUE_MAX + 10)
            .map(|i| StoreEvent::NoResponse {
                uuid: format!("j{i}"),
                node: "n".into(),
                at_ms: 1,
            })
            .collect();
        store.apply(&events).unwrap();
        assert_eq!(store.queued(), QUEUE_MAX);
        let said = store.status().unwrap();
        assert!(said.contains("cannot be written"), "{said}");
        assert!(said.contains("10 job events dropped"), "{said}");
        assert!(
            said.contains("postgres://mgr:***@127.0.0.1:1/jobs"),
            "{said}"
        );
        assert!(!said.contains("secret"), "{said}");
        let t = Instant::now();
        let err = store.get("j1").unwrap_err();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
        assert!(store.unsynced_since().is_some());
        // Nothing is acknowledged while it cannot write.
        assert!(store.flush_nowait().is_err());
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (v, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, i + 1);
            assert!(sql.contains("service_mgr."));
        }
    }
}
