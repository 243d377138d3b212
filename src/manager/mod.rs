//! The manager daemon (`service-mgrd`): takes requests from clients, publishes
//! them to agents, collects results on the sink and republishes them to the
//! client that asked.
//!
//! One thread owns every socket and polls them together with the control fd;
//! this file holds that loop and the sockets, the rest is in parts:
//! [`frontend`] (requests and follows), [`routing`] (who must answer, a pure
//! function), [`backend`] (subscriptions, presence, welcome), [`sink`]
//! (results, announcements, departures), [`mgmt`] (management commands),
//! [`registry`] (the agents), [`journal`] (the agents known across a
//! restart), [`late`] (requests to agents not back since it), [`trust`] (the
//! gate) and [`peers`] (who may connect: every socket is a CURVE server,
//! judged by ZAP before a message is read).
//!
//! Fixes over 0.1 that live here:
//! - the backend XPUB runs in manual mode and stores each subscription with a
//!   terminator, so topics match exactly instead of by prefix;
//! - the result publisher is an XPUB too: results of a job are held until the
//!   client's subscription to the job id arrives, so none is lost to the race
//!   between dispatch and subscribe;
//! - agents register (see [`registry`]); each request names the nodes expected
//!   to answer, lost and stopped ones included, and a node that goes away (or
//!   is down already) gets a `no_response` result at once.

mod backend;
mod frontend;
mod journal;
mod keysync;
mod late;
mod links;
mod mgmt;
pub mod peers;
pub mod registry;
pub mod routing;
mod sink;
mod subscribers;
pub mod trust;

use crate::clock::now_ms;
use crate::config::ManagerConfig;
use crate::host::HostInfo;
use crate::jobstore::{self, JobStore, StoreEvent};
use crate::metrics::{self, ManagerMetrics};
use crate::protocol::{self as p, Accepted, ServiceRequest};
use crate::runtime::{Control, OnReady};
use crate::security::{KeyPair, Role};
use crate::transport;
use anyhow::{Context, Result};
use peers::{domain, Peers};
use registry::Registry;
use slog::{debug, error, info, warn, Logger};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use subscribers::Subscribers;
use trust::Gate;

/// The endpoints the manager really bound (ports resolved), for the ready
/// notification and `manager.status`.
pub use crate::protocol::mgmt::Bound;

/// The ready notification: the bound endpoints and our pid.
#[derive(serde::Serialize)]
struct Ready<'a> {
    #[serde(flatten)]
    bound: &'a Bound,
    pid: u32,
}

/// A request the manager dispatched and whose results it routes.
struct Job {
    created: Instant,
    created_ms: u64,
    request: ServiceRequest,
    /// Nodes expected to answer.
    expected: Vec<String>,
    /// Expected nodes that have not answered yet.
    pending: BTreeSet<String>,
    /// Result frames received so far, in arrival order, kept until the job
    /// expires so that a late or second subscriber gets them all.
    results: Vec<Vec<u8>>,
    /// The `no_response` frames of silent nodes, by node: kept apart so that a
    /// late real answer replaces its node's placeholder, and a follower is
    /// replayed each node's latest state rather than both.
    silent: BTreeMap<String, Vec<u8>>,
    /// Whether a client subscribed to the job id (held until then).
    subscribed: bool,
    /// The connections (see [`transport::Peer`]) that were replayed the
    /// results so far: each gets them once, at most REPLAYS_MAX in all.
    replayed: BTreeSet<usize>,
    /// The frontend envelopes of clients that get the results on their own
    /// connection (`attach`), at most REPLAYS_MAX.
    attached: Vec<Vec<Vec<u8>>>,
    /// Expected nodes not back since a restart, sent the request when they are.
    late: Option<late::Late>,
    /// Nodes whose real answer (not `no_response`) is in: a second copy
    /// (an agent re-sending until acknowledged) is acknowledged, not counted.
    answered: BTreeSet<String>,
}

/// Most connections a job's stored results are replayed to (each once): a
/// client and a few followers; every replay is a copy queued per connection.
const REPLAYS_MAX: usize = 16;

struct Sockets {
    frontend: zmq::Socket,
    backend: zmq::Socket,
    sink: zmq::Socket,
    mgmt: zmq::Socket,
    results: zmq::Socket,
}

/// Run the manager until `control` says stop or `manager.shutdown` arrives.
/// `on_ready` receives the bound endpoints once every socket is bound.
pub fn run(
    config: &ManagerConfig,
    control: &Control,
    log: &Logger,
    on_ready: OnReady,
) -> Result<()> {
    let gate = Gate::open(
        &config.state_dir(),
        config.allow_unsigned,
        Duration::from_secs(config.request_window),
        log,
    )?;
    if config.allow_unsigned {
        warn!(log, "allow_unsigned is on: unsigned 0.1 clients and agents are served; anyone who reaches the ports can run requests");
    }
    // A damaged store must not keep the manager down: it is repaired or moved
    // aside, said loudly here and in manager.status.
    let store_at = config.job_store_location();
    if let jobstore::Location::Redb(path) = &store_at {
        if !path.exists() {
            info!(log, "no job store yet: starting an empty one"; "path" => %path.display());
        }
    }
    let (store, store_warning) = jobstore::open(&store_at, log)?;
    // Managers sharing a PostgreSQL store share their key decisions too.
    let key_sync = match &store_at {
        jobstore::Location::Postgres(url) => Some(keysync::KeySync::start(
            url,
            &config.state_dir().join("keys"),
            log,
        )?),
        jobstore::Location::Redb(_) => None,
    };
    if let Some(w) = &store_warning {
        error!(log, "job store damaged"; "error" => w);
    }
    // The agents known before a restart are awaited, not forgotten.
    let started_ms = now_ms();
    let journal_path = config.state_dir().join("agents.json");
    let mut registry = Registry::new(Duration::from_secs(config.forget_after));
    let known = journal::load(&journal_path, started_ms, log);
    let beat = known
        .iter()
        .map(|e| e.interval())
        .max()
        .unwrap_or(Duration::from_secs(2));
    registry.restore(known);
    let ctx = zmq::Context::new();
    // One I/O thread per core, at most 4, for the agents (CURVE handshakes
    // and heartbeats), and one more of its own for clients and management
    // (see bind_all).
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    // Before the first socket (the ZAP handler's): libzmq starts its
    // threads then, and ignores the setting afterwards.
    ctx.set_io_threads(cores as i32 + 1)?;
    // Secure mode: our key is the CURVE server key of every socket; the ZAP
    // handler is bound before any of them, or libzmq would admit everyone.
    let secure = if config.allow_unsigned {
        None
    } else {
        let key = own_key(config, log)?;
        let zap = crate::zap::Handler::bind(&ctx).context("cannot bind the ZAP handler")?;
        let mut peers = Peers::new(&key, &config.mgmt_read_keys, &config.mgmt_admin_keys);
        peers.refresh(&gate.keys);
        Some((key, zap, peers))
    };
    let (sockets, mut bound) = bind_all(&ctx, config, secure.as_ref().map(|s| &s.0))?;
    bound.manager_key = secure.as_ref().map(|s| s.0.public().to_string());
    let metrics = ManagerMetrics::new();
    // Serving until run returns; dropping it stops the HTTP thread.
    let metrics_server = metrics::serve(&config.metrics_endpoint, metrics.registry(), log)?;
    bound.metrics_endpoint = metrics_server.as_ref().map(|s| s.addr().to_string());
    on_ready(&serde_json::to_value(Ready {
        bound: &bound,
        pid: std::process::id(),
    })?)?;
    info!(log, "service manager started";
        "frontend" => &bound.frontend_endpoint, "backend" => &bound.backend_endpoint,
        "sink" => &bound.sink_endpoint, "mgmt" => &bound.mgmt_endpoint,
        "results" => &bound.result_endpoint);
    // Handshakes that fail on the agents' and clients' sockets: a 0.1 peer
    // (plaintext) is told apart and the log says how to serve it.
    let plain_peers = match &secure {
        Some(_) => Some([
            transport::HandshakeWatch::new(&ctx, &sockets.backend)?,
            transport::HandshakeWatch::new(&ctx, &sockets.frontend)?,
        ]),
        None => None,
    };
    let (zap, peers) = match secure {
        Some((key, zap, peers)) => {
            info!(log, "clients and agents pin this manager key"; "fingerprint" => key.public().fingerprint(),
                "file" => %config.key_file().with_extension("key.pub").display());
            (Some(zap), Some(peers))
        }
        None => (None, None),
    };
    let mut mgr = Manager {
        key_sync: key_sync.as_ref().map(keysync::KeySync::warning),
        plain_peers,
        plain_said: None,
        zap,
        peers,
        peer: String::new(),
        config,
        log,
        s: sockets,
        bound,
        jobs: HashMap::new(),
        registry,
        journal: Some(journal::Journal::start(journal_path, log)),
        started: Instant::now(),
        started_ms,
        grace: late::grace(beat),
        awaiting: BTreeSet::new(),
        gate,
        store: Some(store),
        store_at,
        store_warning,
        failing: None,
        held: std::collections::VecDeque::new(),
        held_dropped: 0,
        events: Vec::new(),
        events_since: None,
        answered: HashMap::new(),
        presence: HashMap::new(),
        host: HostInfo::read(),
        subscriptions: HashMap::new(),
        links: (!config.allow_unsigned).then(links::Links::default),
        link_rid: None,
        backend_subs: Subscribers::new(p::BACKEND_SUBSCRIPTIONS_MAX),
        result_subs: Subscribers::new(p::RESULT_SUBSCRIPTIONS_MAX),
        metrics,
        unwritten_since: None,
        acks: sink::Acks::default(),
        stop: false,
        source: String::new(),
    };
    let served = mgr.serve(control);
    if let Some(j) = mgr.journal.take() {
        j.finish(&mgr.registry);
    }
    drop(metrics_server);
    // The store is written and synced by serve; closed here, before the
    // sockets, so that nothing of it waits on their teardown.
    drop(mgr.store.take());
    drop(key_sync);
    close_sockets(ctx, mgr.s, mgr.zap, mgr.plain_peers, log);
    served?;
    info!(log, "service manager stopped");
    Ok(())
}

/// The longest a stop waits for libzmq's teardown: the results socket's
/// linger, so that results already published still reach their clients.
const TEARDOWN_WAIT: Duration = Duration::from_millis(RESULTS_LINGER_MS as u64);

/// Close the sockets and the context, waiting at most TEARDOWN_WAIT.
///
/// Closing the backend XPUB makes libzmq remove each agent's connection from
/// its subscription trie by walking the whole trie (`mtrie::rm` per pipe), so
/// the teardown grows with the square of the fleet: 8 s for 500 agents, 22-26 s
/// for 1,000, 189 s for 3,000, past systemd's stop timeout (issue 13).
/// Nothing of ours needs it: the store is closed, and the process is exiting.
/// So the teardown runs on a thread of its own; a small fleet's finishes at
/// once, a large one's is cut short by the exit after TEARDOWN_WAIT (the kernel
/// closes the connections). The results socket is closed first, and its
/// messages go out during the wait (its linger), since the I/O threads, not
/// the trie walk, deliver them.
fn close_sockets(
    ctx: zmq::Context,
    s: Sockets,
    zap: Option<crate::zap::Handler>,
    plain_peers: Option<[transport::HandshakeWatch; 2]>,
    log: &Logger,
) {
    let (done, finished) = std::sync::mpsc::channel();
    let started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("zmq-teardown".into())
        .spawn(move || {
            let Sockets {
                frontend,
                backend,
                sink,
                mgmt,
                results,
            } = s;
            drop(results);
            drop((frontend, sink, mgmt, zap, plain_peers));
            drop(backend);
            drop(ctx);
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        // Without a thread the process exits without closing them.
        warn!(log, "cannot start the socket teardown; exiting without it"; "error" => %e);
        return;
    }
    match finished.recv_timeout(TEARDOWN_WAIT) {
        Ok(()) => debug!(log, "sockets closed"; "ms" => started.elapsed().as_millis()),
        Err(_) => info!(log, "not waiting for the teardown of the agents' connections: \
            the exit closes them"; "waited_ms" => TEARDOWN_WAIT.as_millis()),
    }
}

/// The manager's key pair, made at first start (as an agent makes its own).
fn own_key(config: &ManagerConfig, log: &Logger) -> Result<KeyPair> {
    let file = config.key_file();
    if !file.exists() {
        let host = crate::host::HostInfo::read().node;
        let name = if crate::security::check_name(&host).is_ok() {
            host
        } else {
            "manager".to_owned()
        };
        let pk =
            crate::security::keygen(&file, Role::Manager, &name, false).with_context(|| {
                format!(
                    "cannot create the manager key {}; set key_file or state_dir",
                    file.display()
                )
            })?;
        info!(log, "generated the manager key; clients and agents need its public half";
            "file" => %file.with_extension("key.pub").display(), "fingerprint" => pk.fingerprint());
    }
    let key = KeyPair::load(&file).with_context(|| {
        format!(
            "cannot use the manager key {}; set key_file",
            file.display()
        )
    })?;
    anyhow::ensure!(
        key.role() == Role::Manager,
        "{} holds a {} key; the manager needs a manager key (service-mgr keygen --role manager -o FILE)",
        file.display(),
        key.role()
    );
    Ok(key)
}

fn bind_all(
    ctx: &zmq::Context,
    config: &ManagerConfig,
    key: Option<&KeyPair>,
) -> Result<(Sockets, Bound)> {
    const PROG: &str = "service-mgrd";
    // The last I/O thread serves clients and management alone: a fleet's
    // CURVE handshakes and heartbeats (10,000 agents connecting at once)
    // saturate the agents' threads, and `mgmt status` then waited behind
    // them for over 10 s (issue 12). Affinity is set before bind: it places
    // the connections a socket accepts.
    let threads = ctx.get_io_threads()?.max(2) as u32;
    let operator = 1u64 << (threads - 1);
    let agents = operator - 1;
    // CURVE server with a ZAP domain per socket, set before bind.
    let secure = |s: &zmq::Socket, domain: &str| match key {
        Some(k) => transport::serve_curve(s, k, domain),
        None => Ok(()),
    };
    let frontend = transport::socket(ctx, zmq::ROUTER)?;
    frontend.set_affinity(operator)?;
    secure(&frontend, domain::FRONTEND)?;
    frontend.set_maxmsgsize(p::HARD_FRAME_LIMIT)?;
    // Attached clients get a whole broadcast's results here, as on `results`.
    frontend.set_sndhwm(100_000)?;
    frontend.set_linger(RESULTS_LINGER_MS)?;
    // Secure mode: one DEALER connection per agent on a ROUTER (see links);
    // plaintext keeps 0.1's pattern, agents' SUBs on an XPUB.
    let backend = match key {
        Some(_) => {
            let mut b = transport::socket(ctx, zmq::ROUTER)?;
            secure(&b, domain::BACKEND)?;
            // Results come on it too.
            b.set_maxmsgsize(p::RESULT_FRAME_LIMIT)?;
            b.set_rcvhwm(100_000)?;
            // A send to a connection that is gone fails instead of vanishing.
            b.set_router_mandatory(true)?;
            transport::set_router_notify_disconnect(&mut b)?;
            transport::set_hello_msg(&mut b, &p::encode(&p::ManagerHello::default()))?;
            // Buffers every agent's connection holds (8 KiB by default):
            // agents' frames are mostly small, and a big result takes a few
            // more reads (BENCHMARKS.md: the manager's memory per agent).
            transport::set_batch_sizes(&mut b, 1024)?;
            b
        }
        None => {
            let mut b = transport::socket(ctx, zmq::XPUB)?;
            transport::set_xpub_manual(&mut b)?;
            b.set_maxmsgsize(p::BACKEND_SUBSCRIPTION_LIMIT)?;
            b
        }
    };
    backend.set_sndhwm(100_000)?;
    // Dead peers (a cut cable sends no FIN) are dropped within seconds, which
    // ends their presence subscription.
    transport::set_heartbeats(&backend)?;
    backend.set_affinity(agents)?;
    // A whole fleet connects at once after a manager restart: libzmq's default
    // listen backlog of 100 made the kernel drop most handshakes.
    backend.set_backlog(4096)?;
    let sink = transport::socket(ctx, zmq::PULL)?;
    sink.set_affinity(agents)?;
    secure(&sink, domain::SINK)?;
    sink.set_backlog(4096)?;
    sink.set_maxmsgsize(p::RESULT_FRAME_LIMIT)?;
    sink.set_rcvhwm(100_000)?;
    let mgmt = transport::socket(ctx, zmq::REP)?;
    mgmt.set_affinity(operator)?;
    secure(&mgmt, domain::MGMT)?;
    mgmt.set_maxmsgsize(p::HARD_FRAME_LIMIT)?;
    let mut results = transport::socket(ctx, zmq::XPUB)?;
    results.set_affinity(operator)?;
    secure(&results, domain::RESULTS)?;
    results.set_maxmsgsize(p::RESULT_SUBSCRIPTION_LIMIT)?;
    // Every subscription is reported, so a second subscriber to a job gets
    // its results too; and every unsubscription, to count each connection's.
    transport::set_xpub_verboser(&mut results)?;
    results.set_sndhwm(100_000)?;
    // Results already published still go out when we stop (close_sockets).
    results.set_linger(RESULTS_LINGER_MS)?;

    let frontend_endpoint = transport::bind(
        &frontend,
        &config.frontend_endpoint,
        "frontend_endpoint",
        PROG,
    )?;
    let backend_endpoint =
        transport::bind(&backend, &config.backend_endpoint, "backend_endpoint", PROG)?;
    let sink_endpoint = transport::bind(&sink, &config.sink_endpoint, "sink_endpoint", PROG)?;
    let mgmt_endpoint = transport::bind(&mgmt, &config.mgmt_endpoint, "mgmt_endpoint", PROG)?;
    let wanted = match &config.result_endpoint {
        Some(e) => e.clone(),
        None => default_result_endpoint(&config.frontend_endpoint)?,
    };
    let result_endpoint = transport::bind(&results, &wanted, "result_endpoint", PROG)?;
    let result_publisher_port = transport::endpoint_port(&result_endpoint).with_context(|| {
        format!("result_endpoint {result_endpoint} has no TCP port; clients find results by port")
    })?;
    Ok((
        Sockets {
            frontend,
            backend,
            sink,
            mgmt,
            results,
        },
        Bound {
            frontend_endpoint,
            backend_endpoint,
            sink_endpoint,
            mgmt_endpoint,
            result_endpoint,
            result_publisher_port,
            metrics_endpoint: None,
            manager_key: None,
        },
    ))
}

/// The frontend's interface with a random port: results go out where requests came in.
fn default_result_endpoint(frontend: &str) -> Result<String> {
    let host = transport::endpoint_host(frontend).with_context(|| {
        format!(
            "frontend_endpoint {frontend} is not tcp://HOST:PORT; set result_endpoint explicitly"
        )
    })?;
    Ok(format!("tcp://{host}:*"))
}

struct Manager<'a> {
    /// Why key decisions are not shared right now (a PostgreSQL job store).
    key_sync: Option<keysync::Warning>,
    /// Failed handshakes on the backend and frontend (secure mode), and when
    /// we last said that they look like 0.1 peers.
    plain_peers: Option<[transport::HandshakeWatch; 2]>,
    plain_said: Option<Instant>,
    /// The ZAP handler and who may connect; `None` with allow_unsigned (plaintext).
    zap: Option<crate::zap::Handler>,
    peers: Option<Peers>,
    /// The `User-Id` of the connection the message being handled came on
    /// (the hex of its CURVE key; empty on plaintext sockets).
    peer: String,
    config: &'a ManagerConfig,
    log: &'a Logger,
    s: Sockets,
    bound: Bound,
    jobs: HashMap<String, Job>,
    registry: Registry,
    /// Keeps what the registry knows across restarts (state_dir/agents.json).
    journal: Option<journal::Journal>,
    /// When this manager started, and how long after it agents known from
    /// before are awaited (the startup grace, see [`late::grace`]).
    started: Instant,
    started_ms: u64,
    grace: Duration,
    /// Jobs with nodes not back since the restart (see [`late`]).
    awaiting: BTreeSet<String>,
    gate: Gate,
    /// Every job, its expected nodes and each result, kept across restarts.
    /// `None` while it failed and could not be reopened yet.
    store: Option<Box<dyn JobStore>>,
    store_at: jobstore::Location,
    /// What was wrong with the job store when it was opened, for `manager.status`.
    store_warning: Option<String>,
    /// Why the store cannot write, and since when we retry: set at the first
    /// failed write (a full disk), cleared once the held events are written.
    failing: Option<(String, Instant)>,
    /// Events that could not be written, oldest first, at most STORE_HOLD_MAX.
    held: std::collections::VecDeque<StoreEvent>,
    /// Held events dropped (the oldest) because the hold was full.
    held_dropped: u64,
    /// Store events not yet written: gathered for up to STORE_BATCH_INTERVAL
    /// and written in one transaction (each commit copies the pages it
    /// touches, so a commit per loop round grew the file fast).
    events: Vec<StoreEvent>,
    /// When the oldest event in `events` happened.
    events_since: Option<Instant>,
    /// Signed request id -> the answer it got, so that a client's retry of the
    /// same signed bytes gets that answer again instead of "replayed".
    answered: HashMap<String, (Instant, Accepted)>,
    /// instance -> its current presence token, so a refreshed token's old
    /// unsubscription is not taken for a disconnect.
    presence: HashMap<String, String>,
    host: HostInfo,
    /// Agent subscriptions by topic (how many pipes), as reported by the backend.
    subscriptions: HashMap<String, usize>,
    /// The agents' connections on the backend ROUTER (secure mode; `None`
    /// on plaintext, where the backend is an XPUB).
    links: Option<links::Links>,
    /// The routing id of the backend message being handled (secure mode).
    link_rid: Option<Vec<u8>>,
    /// Live subscriptions per connection on the backend and the result publisher.
    backend_subs: Subscribers<zmq::Message>,
    result_subs: Subscribers<zmq::Message>,
    metrics: ManagerMetrics,
    /// Since when store events failed to be written (a failing disk), for the write lag.
    unwritten_since: Option<Instant>,
    /// Results to acknowledge to their agents once the store holds them durably.
    acks: sink::Acks,
    stop: bool,
    /// The address of the peer whose message is being handled ("unknown" if
    /// libzmq gives none), for the limits on filing unknown keys per source.
    source: String,
}

/// Longest time a store event waits to be written with others.
const STORE_BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Events that are written at once, however young.
const STORE_BATCH_EVENTS: usize = 5000;
/// How often the gauges (agents by state, job store lag) are recomputed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the job store's file size is read.
const STORE_SIZE_INTERVAL: Duration = Duration::from_secs(5);
/// How long the results socket keeps sending what was published once we stop.
const RESULTS_LINGER_MS: i32 = 2000;
/// How often a failing job store is reopened and its held events retried.
const STORE_RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// Most events held in memory while the store cannot write; beyond, the oldest go.
const STORE_HOLD_MAX: usize = 100_000;

impl Manager<'_> {
    fn serve(&mut self, control: &Control) -> Result<()> {
        let mut last_sweep = Instant::now();
        let mut last_expire: Option<Instant> = None;
        let mut last_trim = Instant::now();
        let mut last_gauges: Option<Instant> = None;
        let mut last_size: Option<Instant> = None;
        while !self.stop {
            let mut items = [
                self.s.frontend.as_poll_item(zmq::POLLIN),
                self.s.backend.as_poll_item(zmq::POLLIN),
                self.s.sink.as_poll_item(zmq::POLLIN),
                self.s.mgmt.as_poll_item(zmq::POLLIN),
                self.s.results.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(control.fd(), zmq::POLLIN),
                match &self.zap {
                    Some(z) => z.socket().as_poll_item(zmq::POLLIN),
                    None => zmq::PollItem::from_fd(-1, zmq::PollEvents::empty()),
                },
            ];
            // Pending store events wait at most STORE_BATCH_INTERVAL for their write.
            let timeout = if self.events.is_empty() {
                250
            } else {
                STORE_BATCH_INTERVAL.as_millis() as i64
            };
            transport::poll(&mut items, timeout)?;
            let round = Instant::now();
            let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            let wake = control.take();
            if wake.reopen_logs {
                info!(self.log, "SIGHUP: log file reopened");
            }
            if wake.shutdown {
                info!(self.log, "shutting down on request");
                self.stop = true;
            }
            if ready[6] {
                self.answer_handshakes();
            }
            if let Some(peers) = &mut self.peers {
                peers.refresh_if_missed(&self.gate.keys);
            }
            // Subscriptions first: a result that arrives in the same round can then go straight out.
            if ready[1] {
                if self.links.is_some() {
                    self.drain(Self::on_link, |s| &s.backend);
                } else {
                    self.drain_subscriptions(Self::on_backend_subscription, |s| &s.backend);
                }
            }
            if ready[4] {
                self.drain_subscriptions(Self::on_result_subscription, |s| &s.results);
            }
            if ready[2] {
                self.drain(Self::on_sink, |s| &s.sink);
            }
            if ready[0] && !self.stop {
                self.drain(Self::on_frontend, |s| &s.frontend);
            }
            if ready[3] {
                self.drain(Self::on_mgmt, |s| &s.mgmt);
            }
            self.dispatch_late();
            if last_sweep.elapsed() >= Duration::from_millis(250) {
                self.say_plaintext_peers();
                let links = self.links.as_ref();
                let linked = |node: &str, instance: &str| {
                    links.is_some_and(|l| {
                        l.holds(&p::backend_topic(&p::private_topic(node, instance)))
                    })
                };
                for d in self.registry.sweep(linked) {
                    self.departed(d);
                }
                self.gate.upkeep();
                match self.gate.reload_if_changed() {
                    Ok(true) => self.key_store_changed(),
                    Ok(false) => {}
                    Err(e) => {
                        error!(self.log, "cannot reload the key store"; "error" => format!("{e:#}"))
                    }
                }
                self.expire_jobs();
                if let Some(j) = &mut self.journal {
                    j.maybe_save(&mut self.registry);
                }
                last_sweep = Instant::now();
            }
            if last_expire.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                let cutoff =
                    now_ms().saturating_sub(self.config.job_retention.saturating_mul(1000));
                let expired = match &self.store {
                    Some(store) if self.failing.is_none() => store.expire(cutoff),
                    _ => Ok(0),
                };
                match expired {
                    Ok(0) => {}
                    Ok(n) => info!(self.log, "expired old jobs from the job store"; "jobs" => n),
                    Err(e) => {
                        error!(self.log, "cannot expire old jobs"; "error" => format!("{e:#}"))
                    }
                }
                self.enforce_store_cap();
                last_expire = Some(Instant::now());
            }
            // glibc keeps what each I/O thread's arena freed: after 10,000
            // agents connected (their handshakes' buffers), 200 of the
            // manager's 530 MiB were free yet held. Returned every 15 s.
            if last_trim.elapsed() >= Duration::from_secs(15) {
                crate::runtime::release_freed_memory();
                last_trim = Instant::now();
            }
            if self
                .failing
                .as_ref()
                .is_some_and(|(_, t)| t.elapsed() >= STORE_RETRY_INTERVAL)
            {
                self.retry_store();
            }
            if !self.events.is_empty() {
                let since = *self.events_since.get_or_insert(round);
                if since.elapsed() >= STORE_BATCH_INTERVAL
                    || self.events.len() >= STORE_BATCH_EVENTS
                {
                    self.write_events();
                }
            }
            self.acknowledge(false);
            if last_gauges.is_none_or(|t| t.elapsed() >= GAUGE_INTERVAL) {
                let size_due = last_size.is_none_or(|t| t.elapsed() >= STORE_SIZE_INTERVAL);
                self.update_gauges(size_due);
                last_gauges = Some(Instant::now());
                if size_due {
                    last_size = last_gauges;
                }
            }
        }
        // Results already on their way in are still delivered.
        self.drain_subscriptions(Self::on_result_subscription, |s| &s.results);
        self.drain(Self::on_sink, |s| &s.sink);
        if self.links.is_some() {
            self.drain(Self::on_link, |s| &s.backend);
        }
        self.write_events();
        if self.failing.is_some() {
            self.retry_store();
        }
        if let Some((why, _)) = &self.failing {
            error!(self.log, "stopping with job store events unwritten: they are lost";
                "events" => self.held.len(), "error" => why);
        } else if let Some(Err(e)) = self.store.as_ref().map(|s| s.flush()) {
            error!(self.log, "cannot flush the job store"; "error" => format!("{e:#}"));
        }
        // What the store now holds is acknowledged before the sockets close.
        self.acknowledge(true);
        Ok(())
    }

    /// One transaction for the events gathered since `events_since`. Callers
    /// that read the store write first, so that it shows every event so far.
    fn write_events(&mut self) {
        let since = self.events_since.take();
        if self.events.is_empty() {
            return;
        }
        let since = since.unwrap_or_else(Instant::now);
        let written = match (&self.store, &self.failing) {
            (Some(store), None) => store.apply(&self.events),
            // Failing: held until the store is reopened (retry_store).
            _ => {
                let events = std::mem::take(&mut self.events);
                self.hold(events);
                return;
            }
        };
        match written {
            Ok(()) => {
                self.unwritten_since = None;
                self.events.clear();
            }
            Err(e) => {
                // The results still went to the client; the record is held
                // in memory until the store can write again (a full disk).
                self.unwritten_since.get_or_insert(since);
                // The store must be reopened, which may lose its unsynced commits.
                self.acks.forget_written();
                let events = std::mem::take(&mut self.events);
                self.hold(events);
                let why = format!("{e:#}");
                error!(self.log, "job store cannot write; holding results in memory; will retry";
                    "error" => &why, "events" => self.held.len(),
                    "retry_s" => STORE_RETRY_INTERVAL.as_secs());
                self.failing = Some((why, Instant::now()));
            }
        }
    }

    /// Keep unwritten events, the oldest dropped beyond STORE_HOLD_MAX.
    fn hold(&mut self, events: Vec<StoreEvent>) {
        self.held.extend(events);
        let over = self.held.len().saturating_sub(STORE_HOLD_MAX);
        if over > 0 {
            self.held.drain(..over);
            // Which results went is not tracked: none awaiting its write is
            // acknowledged, so their agents send them again.
            self.acks.forget_unwritten();
            if self.held_dropped == 0 {
                error!(self.log, "job store still cannot write: dropping the oldest held results";
                    "held_max" => STORE_HOLD_MAX);
            }
            self.held_dropped += over as u64;
        }
    }

    /// The store failed to write: close it (redb refuses every write after an
    /// I/O error until reopened), reopen it and write what was held. Quiet
    /// while it still fails; logs once when it recovers.
    fn retry_store(&mut self) {
        // Dropping it first releases the file's lock; its final flush may fail.
        self.store = None;
        // What it committed but never synced may be gone once reopened: not acknowledged.
        self.acks.forget_written();
        let store = match jobstore::open(&self.store_at, self.log) {
            Ok((store, note)) => {
                if let Some(n) = note {
                    error!(self.log, "job store damaged"; "error" => &n);
                    self.store_warning = Some(n);
                }
                store
            }
            Err(e) => {
                debug!(self.log, "job store still cannot be reopened"; "error" => format!("{e:#}"));
                self.failing = self.failing.take().map(|(w, _)| (w, Instant::now()));
                return;
            }
        };
        self.held.extend(std::mem::take(&mut self.events));
        self.events_since = None;
        let held: Vec<StoreEvent> = self.held.drain(..).collect();
        let mut failed = None;
        for (i, chunk) in held.chunks(STORE_BATCH_EVENTS).enumerate() {
            if let Err(e) = store.apply(chunk) {
                failed = Some((i * STORE_BATCH_EVENTS, format!("{e:#}")));
                break;
            }
        }
        self.store = Some(store);
        match failed {
            Some((done, why)) => {
                debug!(self.log, "job store still cannot write"; "error" => &why);
                self.held.extend(held.into_iter().skip(done));
                self.failing = Some((why, Instant::now()));
            }
            None => {
                info!(self.log, "job store writes again: held results written";
                    "events" => held.len(), "dropped" => self.held_dropped);
                self.failing = None;
                self.held_dropped = 0;
                self.unwritten_since = None;
            }
        }
    }

    /// The store for a read, or why there is none (it failed and is being reopened).
    fn readable_store(&self) -> Result<&dyn JobStore, String> {
        self.store.as_deref().ok_or_else(|| {
            let why = self.failing.as_ref().map_or("", |(w, _)| w.as_str());
            format!("the job store is unavailable ({why}); service-mgrd retries every {} s: free space in state_dir",
                STORE_RETRY_INTERVAL.as_secs())
        })
    }

    /// What `manager.status` says of the job store, if anything is wrong.
    fn store_status(&self) -> Option<String> {
        let failing = self.failing.as_ref().map(|(why, _)| {
            let mut s = format!(
                "job store cannot write: {why}; holding {} job events in memory; retrying every {} s",
                self.held.len(),
                STORE_RETRY_INTERVAL.as_secs()
            );
            if self.held_dropped > 0 {
                s.push_str(&format!("; {} dropped (the hold is full)", self.held_dropped));
            }
            s
        });
        let writer = self.store.as_ref().and_then(|s| s.status());
        let said: Vec<String> = [failing, writer, self.store_warning.clone()]
            .into_iter()
            .flatten()
            .collect();
        (!said.is_empty()).then(|| said.join("; "))
    }

    /// Remove the oldest jobs while the store is over `job_store_max_mb`.
    fn enforce_store_cap(&mut self) {
        let max_mb = self.config.job_store_max_mb;
        if max_mb == 0 {
            return;
        }
        let Some(store) = self.store.as_ref().filter(|_| self.failing.is_none()) else {
            return;
        };
        match store.trim_to(max_mb.saturating_mul(1 << 20)) {
            Ok(0) => {}
            Ok(n) => warn!(self.log, "job store over its size cap: removed the oldest jobs";
                "jobs" => n, "job_store_max_mb" => max_mb),
            Err(e) => {
                error!(self.log, "cannot trim the job store to its size cap"; "error" => format!("{e:#}"))
            }
        }
    }

    /// Recompute the gauges: agents by state, the job store's write lag and,
    /// when `size` is set, its size on disk.
    fn update_gauges(&mut self, size: bool) {
        for (state, n) in self.registry.count_by_state() {
            self.metrics.set_agents(state, n);
        }
        let pending = self.gate.pending_agent_count();
        self.metrics
            .set_agents(crate::protocol::mgmt::AgentState::Pending.as_str(), pending);
        // Events are unwritten while the store fails, and not yet durable
        // until the store's flusher has synced them.
        let oldest = [
            self.unwritten_since,
            self.events_since,
            self.store.as_ref().and_then(|s| s.unsynced_since()),
        ]
        .into_iter()
        .flatten()
        .min();
        self.metrics
            .job_store_lag(oldest.map_or(Duration::ZERO, |t| t.elapsed()));
        if size {
            match self.store.as_ref().map(|s| s.size_bytes()) {
                None => {}
                Some(Ok(bytes)) => self.metrics.job_store_bytes(bytes),
                Some(Err(e)) => {
                    debug!(self.log, "cannot read the job store's size"; "error" => %e)
                }
            }
        }
    }

    /// Whether the connection of the message being handled holds the key
    /// `key_id` (always true on plaintext sockets, where nobody proves anything).
    fn sent_by(&self, key_id: &str) -> bool {
        self.peers.is_none() || peers::user_id_of_key_id(key_id).as_deref() == Some(&self.peer)
    }

    /// The accepted key of `role` behind the message being handled (looked
    /// up again in the store if the index does not know it yet).
    fn accepted_peer(&mut self, role: Role) -> Option<crate::security::PublicKey> {
        let peers = self.peers.as_mut()?;
        if peers.accepted(&self.peer, role).is_none() {
            peers.refresh_if_missed(&self.gate.keys);
        }
        peers.accepted(&self.peer, role).cloned()
    }

    /// A failed handshake that was not a refused key: most likely a 0.1
    /// agent or client speaking plaintext. Said once per hour, with the fix.
    fn say_plaintext_peers(&mut self) {
        let Some(watches) = &self.plain_peers else {
            return;
        };
        let failed: Vec<bool> = watches.iter().map(|w| w.failed() == Some(false)).collect();
        if failed.iter().any(|f| *f)
            && self
                .plain_said
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
        {
            let on = if failed[0] {
                "backend (agents)"
            } else {
                "frontend (clients)"
            };
            warn!(self.log, "a peer failed the encrypted handshake: a service-mgr 0.1 peer (plaintext) \
                or one that pins another manager key; to serve 0.1 agents and clients set \
                allow_unsigned = true (plaintext sockets, see SECURITY.md)"; "socket" => on);
            self.plain_said = Some(Instant::now());
        }
    }

    /// A key's state changed on disk: re-index the peers, and agents whose key
    /// is no longer accepted (or no longer the only one of its node) get no
    /// more requests.
    fn key_store_changed(&mut self) {
        if let Some(peers) = &mut self.peers {
            peers.refresh(&self.gate.keys);
        }
        info!(self.log, "key store changed; reloaded");
        let gate = &self.gate;
        let revoked = self.registry.revoke(|key| gate.trusts_agent_key(key));
        for d in revoked {
            self.departed(d);
        }
    }

    /// ZAP: decide every handshake waiting, and sum up refusals in the log.
    fn answer_handshakes(&mut self) {
        // Keys accepted on disk a moment ago count at once (three stats).
        if let Ok(true) = self.gate.reload_if_changed() {
            self.key_store_changed();
        }
        let (Some(zap), Some(peers)) = (&self.zap, &mut self.peers) else {
            return;
        };
        let keys = &self.gate.keys;
        if let Err(e) = zap.answer_waiting(|req| {
            let verdict = peers.judge(req, keys);
            if let crate::zap::Verdict::Deny { reason } = &verdict {
                debug!(self.log, "handshake refused"; "domain" => &req.domain,
                    "address" => &req.address, "why" => reason);
            }
            verdict
        }) {
            error!(self.log, "ZAP handler failed"; "error" => %e);
        }
        if let Some((n, example)) = peers.denials_to_log() {
            warn!(self.log, "handshakes refused (unknown, rejected or unentitled keys)";
                "count" => n, "example" => example);
        }
    }

    /// Handle every queued message of one socket, up to a bound so that one
    /// busy socket cannot starve the others.
    fn drain(&mut self, handle: fn(&mut Self, Vec<Vec<u8>>), sock: fn(&Sockets) -> &zmq::Socket) {
        for _ in 0..1000 {
            match transport::try_recv_from(sock(&self.s)) {
                Ok(Some((sender, frames))) => {
                    self.peer = sender.user;
                    self.source = sender.address;
                    handle(self, frames)
                }
                Ok(None) => return,
                Err(e) => {
                    error!(self.log, "receive failed"; "error" => %e);
                    return;
                }
            }
        }
    }

    /// As `drain`, for the subscriptions of an XPUB, with their connection.
    fn drain_subscriptions(
        &mut self,
        handle: fn(&mut Self, Vec<u8>, Option<transport::Peer>),
        sock: fn(&Sockets) -> &zmq::Socket,
    ) {
        for _ in 0..1000 {
            match transport::try_recv_subscription(sock(&self.s)) {
                Ok(Some(sub)) => {
                    self.peer = sub.user;
                    handle(self, sub.frame, sub.peer)
                }
                Ok(None) => return,
                Err(e) => {
                    error!(self.log, "receive failed"; "error" => %e);
                    return;
                }
            }
        }
    }

    /// Count a subscription of `peer` on one XPUB (bound on `port`); false
    /// when the connection went over `which`'s cap, or sent a topic that is
    /// `too_long`, and was closed.
    fn subscription_allowed(
        &mut self,
        which: fn(&mut Self) -> &mut Subscribers<zmq::Message>,
        port: Option<u16>,
        subscribe: bool,
        too_long: bool,
        peer: Option<transport::Peer>,
    ) -> bool {
        let Some(peer) = peer else { return true };
        let address = if too_long {
            Some(peer.address)
        } else {
            which(self).count(peer.conn, &peer.address, peer.pin, subscribe)
        };
        let Some(address) = address else {
            return true;
        };
        let closed = port.map_or(0, |port| transport::close_connections(port, &address));
        warn!(self.log, "too many subscriptions from one connection: closed the connections of its address";
            "address" => &address, "closed" => closed, "port" => port);
        false
    }

    /// Forget jobs older than job_ttl; their silent nodes are recorded as such.
    fn expire_jobs(&mut self) {
        let window = Duration::from_secs(self.config.request_window * 2);
        self.answered.retain(|_, (at, _)| at.elapsed() < window);
        let ttl = Duration::from_secs(self.config.job_ttl);
        let events = &mut self.events;
        let metrics = &self.metrics;
        self.jobs.retain(|uuid, j| {
            if j.created.elapsed() < ttl {
                return true;
            }
            for n in &j.pending {
                metrics.result(p::Status::NoResponse.as_str(), None);
                events.push(StoreEvent::NoResponse {
                    uuid: uuid.clone(),
                    node: n.clone(),
                    at_ms: now_ms(),
                });
            }
            if !j.pending.is_empty() {
                events.push(StoreEvent::Finished {
                    uuid: uuid.clone(),
                    at_ms: now_ms(),
                });
            }
            false
        });
    }
}

fn publish(results: &zmq::Socket, log: &Logger, uuid: &str, frame: &[u8]) {
    if let Err(e) = results.send_multipart([uuid.as_bytes(), frame], zmq::DONTWAIT) {
        warn!(log, "cannot publish result"; "uuid" => uuid, "error" => %e);
    }
}
