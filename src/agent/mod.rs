//! The agent (`service-mgr-agentd`): subscribes to its topics on each of its
//! managers' backends, runs each request through the host's service manager
//! and sends the result back to the manager that asked.
//!
//! The main thread owns every socket. Each request runs on a worker thread,
//! which hands its result back over an inproc PUSH socket, so a slow command
//! never holds up the next request (0.1 ran one at a time).

mod answers;
pub mod exec;
pub mod guard;
pub mod outbox;
pub mod simulate;
mod uplink;

use crate::config::AgentConfig;
use crate::host::HostInfo;
use crate::protocol::mgmt::{self, AgentStatus};
use crate::protocol::{
    self as p, Announce, AnnounceKind, BackendMessage, Dispatch, ExecResult, MgmtReply,
    MgmtRequest, Output, ResultMsg, ServiceState, Status,
};
use crate::runtime::{Control, OnReady};
use crate::security;
use crate::transport::{self, try_recv};
use anyhow::{Context as _, Result};
use exec::Backend;
use serde::Serialize;
use serde_json::json;
use slog::{debug, error, info, warn, Logger};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How often the agent renews its signed presence subscription (the manager
/// accepts tokens up to twice the request window old).
const PRESENCE_REFRESH: Duration = Duration::from_secs(30);

/// How long a stopping agent waits, once it killed what outlived
/// `stop_timeout` (or on `agent.shutdown` a second time), for the workers to
/// hand back their `interrupted` results before it answers for them itself.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// How long closing the result socket may wait for a result still queued
/// (the manager away for a moment, a slow link).
const RESULT_LINGER_MS: i32 = 5000;

/// ... and for the goodbye alone, when no result was sent lately: an idle
/// agent whose manager is away must not wait [`RESULT_LINGER_MS`] for nothing.
const BYE_LINGER_MS: i32 = 250;

/// How long a result is held back when a 0.1 manager dispatched the request.
/// A 0.1 manager publishes results on a plain PUB at once, and the 0.1 client
/// subscribes only after it got its uuid: an answer sent before that is lost
/// (issue 15: 12-33 % of ours, 2-4 % of 0.1's slower agents). The hold counts
/// from the request's arrival, so a command that takes longer is not delayed.
/// It must stay well under 0.1's default wait (0.1 s from the client's
/// subscription) or the answer comes too late instead: 50 ms beats a
/// subscription over a LAN with room to spare (measured in tests/compat01.rs,
/// `a3_results_of_our_agents_reach_a_01_client_through_a_01_manager`).
/// Our manager holds results itself; its requests are never delayed.
pub const HOLD_FOR_01_MANAGER: Duration = Duration::from_millis(50);

/// How often the outbox is checked for results whose resend is due (each
/// has its own backoff, see [`outbox::RETRY_FIRST`]).
const RESEND_CHECK: Duration = Duration::from_secs(1);

/// What the agent is, as it reports itself.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub node: String,
    pub system: String,
    pub version: String,
    /// Every topic it answers: `any`, the OS name, the node name and the configured ones.
    pub topics: Vec<String>,
}

impl Identity {
    pub fn new(config: &AgentConfig, host: &HostInfo) -> Result<Identity> {
        let node = config.node.clone().unwrap_or_else(|| host.node.clone());
        anyhow::ensure!(
            p::valid_topic(&node),
            "node name {node:?} is not usable as a topic (printable, no blanks or commas); set node"
        );
        let mut topics = BTreeSet::new();
        topics.insert(p::TOPIC_ANY.to_owned());
        topics.insert(host.system.clone());
        topics.insert(node.clone());
        for t in &config.topics {
            anyhow::ensure!(
                p::valid_topic(t),
                "topic {t:?} is not a valid topic (printable, no blanks or commas); fix topics"
            );
            topics.insert(t.clone());
        }
        Ok(Identity {
            node,
            system: host.system.clone(),
            version: host.version.clone(),
            topics: topics.into_iter().collect(),
        })
    }
}

/// Run the agent until `control` says stop or `agent.shutdown` arrives.
pub fn run(config: &AgentConfig, control: &Control, log: &Logger, on_ready: OnReady) -> Result<()> {
    let host = HostInfo::read();
    let me = Identity::new(config, &host)?;
    let backend = Backend::resolve(config);
    match &backend {
        Some(b) => info!(log, "service manager found"; "program" => %b.program().display()),
        None => warn!(
            log,
            "no service manager found (service, systemctl, rc-service); every request will fail"
        ),
    }
    anyhow::ensure!(
        config.max_output <= p::MAX_OUTPUT_LIMIT,
        "max_output = {} is over the limit of {} bytes (results must fit a message); lower max_output",
        config.max_output,
        p::MAX_OUTPUT_LIMIT
    );
    let guard = guard::Guard::load(config, &me.node, log)?;
    if config.allow_unsigned {
        warn!(
            log,
            "allow_unsigned is on: unsigned (0.1) requests run, limited by allowed_commands only"
        );
    }
    // A second SIGTERM/SIGINT stops at once, but still answers `interrupted`
    // for what runs (a third one exits on the spot).
    control.hurry_on_second_signal();
    let ctx = zmq::Context::new();
    // Our management socket is a CURVE server with our key, unless we serve 0.1
    // tools; its ZAP handler is bound first (without one libzmq admits anyone).
    let zap = if config.allow_unsigned {
        None
    } else {
        Some(crate::zap::Handler::bind(&ctx).context("cannot bind the ZAP handler")?)
    };
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let mut managers = Vec::new();
    for addr in config.managers()? {
        managers.push(Manager::connect(
            &ctx, &addr, &guard, &instance, &me, control, log,
        )?);
    }
    let curve = managers.iter().filter(|m| m.curve()).count();
    anyhow::ensure!(
        curve == 0 || curve == managers.len(),
        "manager_key pins some managers and leaves others plaintext; an agent talks to all its \
         managers the same way: give every manager's key, or `plaintext` for all"
    );
    let sinks: BTreeSet<&str> = managers.iter().filter_map(|m| m.uplink.sink()).collect();
    anyhow::ensure!(
        curve > 0 || sinks.len() == managers.len(),
        "several plaintext managers need one sink_endpoint each, comma-separated in the order of \
         manager_endpoint"
    );
    // Our managers acknowledge stored results to agents that keep them until
    // then (CURVE only: a plaintext peer may be a 0.1 manager, which never does).
    let outbox =
        (curve > 0).then(|| outbox::Outbox::open(&outbox::journal_path(&config.key_file()), log));
    let (mgmt, mgmt_endpoint) = bind_mgmt(&ctx, config, zap.as_ref().map(|_| guard.key.as_ref()))?;
    let inbox_endpoint = format!("inproc://agent-results-{}", uuid::Uuid::new_v4().simple());
    let inbox = transport::socket(&ctx, zmq::PULL)?;
    inbox.bind(&inbox_endpoint)?;
    let metrics = crate::metrics::AgentMetrics::new();
    let metrics_server = crate::metrics::serve(&config.metrics_endpoint, metrics.registry(), log)?;
    on_ready(
        &json!({"mgmt_endpoint": mgmt_endpoint, "node": me.node, "topics": me.topics,
                     "pid": std::process::id(),
                     "metrics_endpoint": metrics_server.as_ref().map(|s| s.addr().to_string())}),
    )?;
    info!(log, "service manager agent started"; "node" => &me.node, "topics" => me.topics.join(","),
        "manager" => &config.manager_endpoint, "sink" => &config.sink_endpoint, "mgmt" => &mgmt_endpoint);

    let private_topic = p::private_topic(&me.node, &instance);
    let mut agent = Agent {
        zap,
        managers,
        via: 0,
        reconnect_at: Vec::new(),
        config,
        log,
        ctx,
        me: Arc::new(me),
        host,
        backend: backend.map(Arc::new),
        inbox_endpoint,
        mgmt,
        inbox,
        private_topic,
        instance,
        guard,
        started_ms: crate::clock::now_ms(),
        running: 0,
        jobs: BTreeMap::new(),
        next_job: 0,
        last_result: std::cell::Cell::new(None),
        metrics,
        held: Default::default(),
        hold_until: None,
        outbox,
        sent_via: HashMap::new(),
        answers: Default::default(),
        stop: false,
    };
    agent.serve(control)?;
    drop(metrics_server);
    info!(log, "service manager agent stopped");
    Ok(())
}

/// One of the agent's managers: the connection and what it knows of us.
struct Manager {
    uplink: uplink::Uplink,
    /// The pinned key, as the log says it.
    described: String,
    /// Failed handshakes of the connection (CURVE only; empty on plaintext).
    watches: Vec<transport::HandshakeWatch>,
    /// Our current signed presence subscription, refreshed so it stays recent.
    presence: String,
    /// Whether this manager granted our private topic since our last token.
    welcomed: bool,
}

impl Manager {
    /// Pin the manager's key and connect; a plaintext connection subscribes
    /// at once, a CURVE one says who we are when the manager greets it.
    fn connect(
        ctx: &zmq::Context,
        addr: &crate::config::ManagerAddr,
        guard: &guard::Guard,
        instance: &str,
        me: &Identity,
        control: &Control,
        log: &Logger,
    ) -> Result<Manager> {
        // The handshake fails with anyone but the key we pin.
        let key = wait_for_manager_key(addr, control, log)?;
        let wire = key.wire(Some(&guard.key))?;
        info!(log, "manager"; "endpoint" => &addr.endpoint, "key" => key.describe());
        let uplink =
            uplink::Uplink::connect(ctx, &addr.endpoint, &addr.sink, &wire, RESULT_LINGER_MS)?;
        let presence = guard.presence(instance);
        if !uplink.is_link() {
            for t in &me.topics {
                uplink.subscribe(t)?;
            }
            uplink.subscribe(&p::private_topic(&me.node, instance))?;
            // Never published on: its unsubscription tells the manager we are gone.
            uplink.subscribe(&presence)?;
        }
        uplink.start()?;
        let watches = match wire {
            transport::Wire::Curve { .. } => uplink
                .sockets()
                .into_iter()
                .map(|(s, _)| transport::HandshakeWatch::new(ctx, s))
                .collect::<Result<Vec<_>>>()?,
            transport::Wire::Plain => Vec::new(),
        };
        Ok(Manager {
            uplink,
            described: key.describe(),
            watches,
            presence,
            welcomed: false,
        })
    }

    fn curve(&self) -> bool {
        self.uplink.is_link()
    }
}

/// A manager's key, waiting up to 10 s for it if it is not there yet: a
/// manager on this host writes it at its first start, which may be a moment
/// after ours (both started at boot, or one line after the other in a shell).
/// Not longer: `start -d` waits for us, and a missing key needs the operator.
fn wait_for_manager_key(
    addr: &crate::config::ManagerAddr,
    control: &Control,
    log: &Logger,
) -> Result<crate::config::pin::ManagerKey> {
    let mut said: Option<Instant> = None;
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        match crate::config::pin::manager_key(addr.key.as_deref(), &addr.endpoint) {
            Ok(key) => return Ok(key),
            // A key that is there but wrong will not get better: stop.
            Err(e) if addr.key.is_some() => {
                return Err(e.context(format!(
                    "the agent cannot know its manager at {}; set manager_key",
                    addr.endpoint
                )))
            }
            Err(e) if Instant::now() >= give_up => {
                return Err(e.context(format!(
                    "the agent cannot know its manager at {}; set manager_key",
                    addr.endpoint
                )))
            }
            Err(e) => {
                if said.is_none() {
                    error!(log, "waiting for the manager's key"; "endpoint" => &addr.endpoint,
                        "error" => format!("{e:#}"));
                    said = Some(Instant::now());
                }
            }
        }
        if control.take().shutdown {
            anyhow::bail!("stopped while waiting for the manager's key");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Agent<'a> {
    /// Judges who may open our management socket; `None` when it is plaintext.
    zap: Option<crate::zap::Handler>,
    /// Our managers, in the order of `manager_endpoint`.
    managers: Vec<Manager>,
    /// The manager whose request is being answered (an index into `managers`).
    via: usize,
    /// When to connect which socket (manager, index in [`uplink::Uplink::sockets`])
    /// again after a failed handshake (libzmq gives up on those).
    reconnect_at: Vec<(Instant, usize, usize)>,
    config: &'a AgentConfig,
    log: &'a Logger,
    ctx: zmq::Context,
    me: Arc<Identity>,
    host: HostInfo,
    backend: Option<Arc<Backend>>,
    inbox_endpoint: String,
    mgmt: zmq::Socket,
    inbox: zmq::Socket,
    instance: String,
    private_topic: String,
    guard: guard::Guard,
    started_ms: u64,
    /// Requests whose worker has not yet handed back a result.
    running: usize,
    /// Those requests, by the number their worker hands back with its result:
    /// what a stopping agent needs to cancel them and answer for them.
    jobs: BTreeMap<u64, Job>,
    next_job: u64,
    /// When we last queued a result for the manager.
    last_result: std::cell::Cell<Option<Instant>>,
    metrics: crate::metrics::AgentMetrics,
    /// Answers to a 0.1 manager's requests, held until their time
    /// ([`HOLD_FOR_01_MANAGER`]); in the order they are due.
    held: std::cell::RefCell<std::collections::VecDeque<Held>>,
    /// The hold of the request being answered: `Some(due)` when a 0.1 manager sent it.
    hold_until: Option<Instant>,
    /// Results sent and not yet acknowledged by the manager (see [`outbox`]);
    /// `None` on a plaintext wire (a 0.1 manager acknowledges nothing).
    outbox: Option<outbox::Outbox>,
    /// The manager each result in the outbox went to (job id -> manager).
    sent_via: HashMap<String, usize>,
    /// What we answered, by request id: a request asked again is answered
    /// from here, never run twice.
    answers: answers::Answers,
    stop: bool,
}

/// An answer held back: when it is due, the manager, its job and its frame.
type Held = (Instant, usize, Option<String>, Vec<u8>);

/// A request being run by a worker.
struct Job {
    /// The manager that sent it, and the job id it gave.
    via: usize,
    uuid: String,
    /// Other managers that sent the same request since (manager, job id):
    /// they get the result too.
    also: Vec<(usize, String)>,
    cmd: String,
    client: Option<security::PublicKey>,
    request_id: Option<String>,
    signed: bool,
    cancel: exec::Cancel,
}

impl Agent<'_> {
    fn serve(&mut self, control: &Control) -> Result<()> {
        let interval = Duration::from_secs(self.config.heartbeat_interval.max(1));
        self.announce(AnnounceKind::Hello);
        let mut next_beat = Instant::now() + interval;
        let mut next_presence = Instant::now() + interval;
        let mut next_resend = Instant::now() + RESEND_CHECK;
        let stop_timeout = Duration::from_secs(self.config.stop_timeout);
        // Set when we start stopping: until then (or until nothing runs) we
        // keep heartbeating, refuse new requests and deliver what finishes.
        let mut stop_deadline: Option<Instant> = None;
        let mut urgent = false;
        loop {
            if self.stop && stop_deadline.is_none() {
                stop_deadline = Some(Instant::now() + stop_timeout);
                if self.running > 0 {
                    info!(self.log, "stopping: new requests are refused; waiting for running commands (stop_timeout)";
                        "running" => self.running, "stop_timeout_s" => self.config.stop_timeout);
                }
            }
            if let Some(deadline) = stop_deadline {
                if self.running == 0 || urgent || Instant::now() >= deadline {
                    break;
                }
            }
            // Each manager's connection, then ours: [MGMT, INBOX, CONTROL, ZAP] after them.
            let n = self.managers.len();
            let (mgmt, inbox, zap) = (n, n + 1, n + 3);
            let mut items: Vec<zmq::PollItem> = self
                .managers
                .iter()
                .map(|m| m.uplink.inbound().as_poll_item(zmq::POLLIN))
                .collect();
            items.extend([
                self.mgmt.as_poll_item(zmq::POLLIN),
                self.inbox.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(control.fd(), zmq::POLLIN),
                match &self.zap {
                    Some(z) => z.socket().as_poll_item(zmq::POLLIN),
                    None => zmq::PollItem::from_fd(-1, zmq::PollEvents::empty()),
                },
            ]);
            let mut wait = next_beat.saturating_duration_since(Instant::now());
            if let Some((due, ..)) = self.held.borrow().front() {
                wait = wait.min(due.saturating_duration_since(Instant::now()));
            }
            if self.outbox.as_ref().is_some_and(|o| !o.is_empty()) {
                wait = wait.min(next_resend.saturating_duration_since(Instant::now()));
            }
            if let Some(deadline) = stop_deadline {
                wait = wait.min(deadline.saturating_duration_since(Instant::now()));
            }
            transport::poll(&mut items, wait.as_millis() as i64)?;
            let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            if ready[zap] {
                self.answer_handshakes();
            }
            self.check_handshakes();
            if Instant::now() >= next_beat {
                self.announce(AnnounceKind::Heartbeat);
                next_beat = Instant::now() + interval;
            }
            if Instant::now() >= next_presence {
                // Until the manager welcomed our current token (key not yet
                // accepted, manager away), try again at every heartbeat.
                let period = if self.managers.iter().all(|m| m.welcomed) {
                    PRESENCE_REFRESH
                } else {
                    interval
                };
                self.refresh_presence();
                next_presence = Instant::now() + period;
            }
            self.guard.reload_if_changed(self.log, false);
            let wake = control.take();
            if wake.reopen_logs {
                self.guard.reload(self.log);
                info!(
                    self.log,
                    "SIGHUP: log file reopened, authorized clients reloaded"
                );
            }
            if wake.shutdown && !self.stop {
                info!(self.log, "shutting down on request");
                self.stop = true;
            }
            if wake.urgent && !urgent {
                info!(self.log, "second signal: stopping now; running commands are killed and answered interrupted";
                    "running" => self.running);
                urgent = true;
            }
            if ready[inbox] {
                self.forward_results();
            }
            self.release_held(false);
            if Instant::now() >= next_resend {
                self.resend_unacked(None);
                next_resend = Instant::now() + RESEND_CHECK;
            }
            for (i, _) in ready[..n].iter().enumerate().filter(|(_, r)| **r) {
                while let Ok(Some(frames)) = try_recv(self.managers[i].uplink.inbound()) {
                    self.on_request(i, frames);
                }
            }
            if ready[mgmt] {
                while let Ok(Some(frames)) = try_recv(&self.mgmt) {
                    self.on_mgmt(frames);
                }
            }
        }
        if self.running > 0 {
            self.interrupt_running()?;
        }
        self.release_held(true);
        self.announce(AnnounceKind::Bye);
        let results_queued = self
            .last_result
            .get()
            .is_some_and(|t| t.elapsed().as_millis() < RESULT_LINGER_MS as u128);
        if results_queued {
            // Closing a PUSH socket right after its last send can lose what is
            // still queued on a fresh connection (seen in tests); linger alone did
            // not cover it. Give the I/O thread a moment to flush before we close.
            std::thread::sleep(Duration::from_millis(200));
        } else {
            // Only heartbeats and the goodbye can be queued: the context's
            // teardown (after "stopped") must not wait the result linger for
            // a manager that is away (issue 15: 2-7 s to exit).
            for m in &self.managers {
                m.uplink.set_linger(BYE_LINGER_MS);
            }
        }
        Ok(())
    }

    /// `stop_timeout` ran out: kill what still runs, deliver the workers'
    /// `interrupted` results, and answer ourselves for those that do not
    /// hand one back within [`KILL_GRACE`], so that no result is lost.
    fn interrupt_running(&mut self) -> Result<()> {
        warn!(self.log, "killing the commands still running (stop_timeout reached or a second signal); they are answered interrupted";
            "running" => self.running, "stop_timeout_s" => self.config.stop_timeout);
        for job in self.jobs.values() {
            job.cancel.cancel();
        }
        let deadline = Instant::now() + KILL_GRACE;
        while self.running > 0 && Instant::now() < deadline {
            let mut items = [self.inbox.as_poll_item(zmq::POLLIN)];
            let wait = deadline.saturating_duration_since(Instant::now());
            transport::poll(&mut items, wait.as_millis().max(1) as i64)?;
            self.forward_results();
        }
        for (_, job) in std::mem::take(&mut self.jobs) {
            let mut r = self.refusal(
                &job.uuid,
                Some(&job.cmd),
                interrupted_why(self.config.stop_timeout),
            );
            r.status = Some(Status::Interrupted);
            self.metrics.record(&r);
            self.finished(job, r, None);
        }
        self.running = 0;
        Ok(())
    }

    /// A new signed presence token replaces the old one (subscribe first, so
    /// that the manager never sees us without one): a restarted manager and a
    /// key accepted meanwhile both take effect within PRESENCE_REFRESH.
    fn refresh_presence(&mut self) {
        for m in &mut self.managers {
            // Said again before each token: a manager that did not hold our key
            // at our first subscription (accepted since) learns we take acks.
            if self.outbox.is_some() {
                let _ = m.uplink.subscribe(p::ACKS_TOPIC);
                let _ = m.uplink.unsubscribe(p::ACKS_TOPIC);
            }
            let fresh = self.guard.presence(&self.instance);
            if m.uplink.subscribe(&fresh).is_ok() {
                let _ = m.uplink.unsubscribe(&m.presence);
                m.presence = fresh;
                m.welcomed = false;
            }
        }
    }

    /// The manager said hello on a new connection (its first or after a
    /// reconnect): say who we are, as a SUB's subscriptions would be sent
    /// again by libzmq: acks, a fresh presence token (it stands for this
    /// connection), our topics (counted in `manager.status`), a hello.
    fn introduce(&mut self, i: usize) {
        let hello = self.announcement(AnnounceKind::Hello);
        let m = &mut self.managers[i];
        debug!(self.log, "connected to the manager; saying who we are"; "endpoint" => m.uplink.endpoint());
        if self.outbox.is_some() {
            let _ = m.uplink.subscribe(p::ACKS_TOPIC);
        }
        m.presence = self.guard.presence(&self.instance);
        m.welcomed = false;
        m.uplink.declare(&m.presence, &self.me.topics);
        let _ = m.uplink.send(hello);
    }

    /// Tell every manager who we are (hello, heartbeat) or that we leave (bye).
    fn announce(&self, kind: AnnounceKind) {
        let frame = self.announcement(kind);
        for m in &self.managers {
            // A full queue (manager away) only costs a heartbeat; the next one will do.
            let _ = m.uplink.send(frame.as_slice());
        }
    }

    /// Our announcement of `kind`, signed.
    fn announcement(&self, kind: AnnounceKind) -> Vec<u8> {
        let mut a = announcement(
            kind,
            &self.me,
            &self.host,
            &self.instance,
            self.started_ms,
            self.config.heartbeat_interval.max(1) * 1000,
            self.running,
        );
        self.guard.sign_announce(&mut a);
        p::encode(&a)
    }

    fn forward_results(&mut self) {
        while let Ok(Some(frames)) = try_recv(&self.inbox) {
            self.running = self.running.saturating_sub(1);
            // [job number, sealed frame, result]; workers hold their own
            // answers (see `on_request`).
            let mut frames = frames.into_iter();
            let (Some(id), Some(frame)) = (frames.next(), frames.next()) else {
                continue;
            };
            let result = frames
                .next()
                .and_then(|r| serde_json::from_slice::<ResultMsg>(&r).ok());
            let job = <[u8; 8]>::try_from(id.as_slice())
                .ok()
                .and_then(|id| self.jobs.remove(&u64::from_be_bytes(id)));
            match (job, result) {
                (Some(job), Some(r)) => self.finished(job, r, Some(frame)),
                (job, _) => {
                    let via = job.as_ref().map_or(0, |j| j.via);
                    self.push_result(via, job.map(|j| j.uuid).as_deref(), frame);
                }
            }
        }
    }

    /// A job's result `r` (`frame`: as its worker sealed it): to the manager
    /// that sent the request, to every other that sent it since, and kept
    /// by request id for one that asks again.
    fn finished(&mut self, job: Job, r: ResultMsg, frame: Option<Vec<u8>>) {
        let seal = |uuid: &str| {
            let mut r = r.clone();
            r.uuid = Some(uuid.to_owned());
            guard::result_frame(
                &self.guard.key,
                &r,
                job.client.as_ref(),
                job.request_id.clone(),
                job.signed,
            )
        };
        let mut out = vec![(
            job.via,
            job.uuid.clone(),
            frame.unwrap_or_else(|| seal(&job.uuid)),
        )];
        for (via, uuid) in &job.also {
            out.push((*via, uuid.clone(), seal(uuid)));
        }
        for (via, uuid, frame) in out {
            self.push_result(via, Some(&uuid), frame);
        }
        if let Some(id) = &job.request_id {
            let answer = answers::Answer {
                result: r,
                client: job.client,
                signed: job.signed,
            };
            self.answers.remember(id, answer);
        }
    }

    /// Send the held answers that are due (`all`: every one, as we stop).
    fn release_held(&mut self, all: bool) {
        loop {
            let next = {
                let mut held = self.held.borrow_mut();
                match held.front() {
                    Some((due, ..)) if all || *due <= Instant::now() => held.pop_front(),
                    _ => None,
                }
            };
            let Some((_, via, uuid, frame)) = next else {
                return;
            };
            self.push_result(via, uuid.as_deref(), frame);
        }
    }

    /// Send a result to the manager that asked now, or hold it when a 0.1
    /// manager dispatched its request.
    fn send_result_frame(&mut self, uuid: Option<&str>, frame: Vec<u8>) {
        match self.hold_until {
            Some(due) if due > Instant::now() => {
                self.held
                    .borrow_mut()
                    .push_back((due, self.via, uuid.map(str::to_owned), frame))
            }
            _ => self.push_result(self.via, uuid, frame),
        }
    }

    /// Send the result of job `uuid` to manager `via`, kept in the outbox
    /// until acknowledged.
    fn push_result(&mut self, via: usize, uuid: Option<&str>, frame: Vec<u8>) {
        self.last_result.set(Some(Instant::now()));
        if let (Some(outbox), Some(uuid)) = (&mut self.outbox, uuid) {
            outbox.add(uuid, &frame);
            self.sent_via.insert(uuid.to_owned(), via);
            if self.sent_via.len() > 2 * outbox.len() + 1024 {
                self.sent_via.retain(|u, _| outbox.contains(u));
            }
        }
        let Some(m) = self.managers.get(via) else {
            return;
        };
        if let Err(e) = m.uplink.send(frame) {
            match &self.outbox {
                Some(_) => {
                    warn!(self.log, "result could not be queued for the manager; kept, sent again later";
                        "endpoint" => m.uplink.endpoint(), "error" => %e)
                }
                None => {
                    error!(self.log, "result could not be queued for the manager and is lost";
                        "endpoint" => m.uplink.endpoint(), "error" => %e)
                }
            }
        }
    }

    /// Send again the results our managers have not acknowledged. `Some(i)`:
    /// manager `i` just admitted us (maybe it restarted): everything that
    /// went to it, or to a manager that is not there now. `None`: those whose
    /// backoff ran out, to the manager they went to or, while that one is
    /// away, to each one that is there (any manager stores a result, also of
    /// a job it does not hold; with a shared job store every manager reads it).
    fn resend_unacked(&mut self, welcomed: Option<usize>) {
        let Some(outbox) = &mut self.outbox else {
            return;
        };
        let (managers, sent_via) = (&self.managers, &self.sent_via);
        let up = |i: usize| managers.get(i).is_some_and(|m| m.welcomed);
        let sent = outbox.resend(welcomed.is_some(), |uuid, frame| {
            let went_to = sent_via.get(uuid).copied();
            let to: Vec<usize> = match (welcomed, went_to.filter(|&i| up(i))) {
                (Some(w), Some(t)) if t != w => return outbox::Resent::NotHere,
                (Some(w), _) => vec![w],
                (None, Some(t)) => vec![t],
                (None, None) => {
                    let there: Vec<usize> = (0..managers.len()).filter(|&i| up(i)).collect();
                    if there.is_empty() {
                        // Queued for when its manager is back.
                        vec![went_to.unwrap_or(0)]
                    } else {
                        there
                    }
                }
            };
            let mut queued = false;
            for i in to {
                queued |= managers
                    .get(i)
                    .is_some_and(|m| m.uplink.send(frame).is_ok());
            }
            if queued {
                outbox::Resent::Sent
            } else {
                outbox::Resent::Full
            }
        });
        if sent > 0 {
            self.last_result.set(Some(Instant::now()));
            if welcomed.is_some() {
                info!(self.log, "results not acknowledged by the manager sent again"; "results" => sent);
            }
        }
    }

    /// A request we accepted before, asked again: by a second manager (the
    /// client retried through it), or by one taking over the job of a manager
    /// that went away. The job running it answers this `uuid` too, or we
    /// answer again what we answered then. Never run twice. False when we
    /// know nothing of it (then it is refused as a replay).
    fn answer_again(&mut self, id: &str, uuid: &str, client: Option<&security::PublicKey>) -> bool {
        let via = self.via;
        let running = self
            .jobs
            .values_mut()
            .find(|j| j.request_id.as_deref() == Some(id) && j.client.as_ref() == client);
        if let Some(job) = running {
            let asked = (via, uuid.to_owned());
            if (job.via, &job.uuid) != (via, &asked.1) && !job.also.contains(&asked) {
                job.also.push(asked);
            }
            info!(self.log, "request asked again while it runs: its result goes to this manager too; it does not run twice";
                "request" => id, "uuid" => uuid);
            return true;
        }
        if let Some(a) = self.answers.recall(id, client) {
            let mut r = a.result.clone();
            r.uuid = Some(uuid.to_owned());
            let frame = guard::result_frame(
                &self.guard.key,
                &r,
                a.client.as_ref(),
                Some(id.to_owned()),
                a.signed,
            );
            info!(self.log, "request asked again: answered from memory; it does not run twice";
                "request" => id, "uuid" => uuid);
            self.send_result_frame(Some(uuid), frame);
            return true;
        }
        // Answered before we restarted, and not yet acknowledged: the outbox has it.
        let kept: Vec<Vec<u8>> = self
            .outbox
            .as_ref()
            .map(|o| o.frames_of(uuid).into_iter().map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        if kept.is_empty() {
            return false;
        }
        info!(self.log, "request asked again: its unacknowledged result sent again; it does not run twice";
            "request" => id, "uuid" => uuid);
        for frame in kept {
            self.push_result(via, Some(uuid), frame);
        }
        true
    }

    /// A message from manager `i`.
    fn on_request(&mut self, i: usize, frames: Vec<Vec<u8>>) {
        self.via = i;
        if let [hello] = frames.as_slice() {
            // Only on the DEALER, from the manager we pinned (CURVE).
            if self.managers[i].uplink.is_link() && p::ManagerHello::is(hello) {
                self.introduce(i);
                return;
            }
        }
        let [topic, body] = frames.as_slice() else {
            warn!(self.log, "backend message ignored: expected [topic, request]"; "frames" => frames.len());
            return;
        };
        // Our manager ends every topic frame with TOPIC_TERMINATOR; a 0.1
        // manager publishes the bare topic. (Our welcome is no sign: a manager
        // of ours in 0.1-compatible mode welcomes nobody.)
        let from_01_manager = topic.last() != Some(&p::TOPIC_TERMINATOR);
        self.hold_until = from_01_manager.then(|| Instant::now() + HOLD_FOR_01_MANAGER);
        // Exact match, whatever prefix matching let through (a 0.1 manager does not terminate topics).
        let topic = p::parse_backend_topic(topic).unwrap_or_default();
        if topic != self.private_topic && !self.me.topics.iter().any(|t| t == topic) {
            debug!(self.log, "request for another topic ignored"; "topic" => topic);
            return;
        }
        let req = match BackendMessage::decode(body) {
            Ok(BackendMessage::Dispatch(r)) => r,
            Ok(BackendMessage::Welcome(_)) => {
                if topic == self.private_topic {
                    debug!(self.log, "the manager admitted us"; "endpoint" => self.managers[i].uplink.endpoint());
                    self.managers[i].welcomed = true;
                    self.resend_unacked(Some(i));
                }
                return;
            }
            Ok(BackendMessage::Ack(ack)) => {
                // Only on our private topic, which only our manager can send on.
                if topic == self.private_topic && ack.node == self.me.node {
                    if let Some(outbox) = &mut self.outbox {
                        for u in &ack.uuids {
                            self.sent_via.remove(u);
                        }
                        let n = outbox.ack(&ack.uuids);
                        debug!(self.log, "results acknowledged"; "results" => n, "kept" => outbox.len());
                    }
                }
                return;
            }
            Err((maybe_uuid, e)) => {
                warn!(self.log, "bad request"; "uuid" => maybe_uuid.as_deref().unwrap_or("-"), "reason" => %e);
                if let Some(uuid) = maybe_uuid {
                    self.answer(&self.refusal(&uuid, None, e.to_string()), None, None, false);
                }
                return;
            }
        };
        // A key we do not know may have been added a moment ago.
        if let Some(auth) = &req.auth {
            if !self.guard.knows_client(&auth.key) {
                self.guard.reload_if_changed(self.log, true);
            }
        }
        // The signature first, so that even a refusal is sealed to a client we verified.
        let signed = req.auth.is_some();
        let admitted = match self.guard.admit(&req, &self.me) {
            Ok(a) => a,
            Err(r) => {
                if let Some(id) = &r.request_id {
                    if self.answer_again(id, &req.uuid, r.client.as_ref()) {
                        return;
                    }
                }
                warn!(self.log, "request refused"; "uuid" => &req.uuid, "service" => &req.service,
                    "cmd" => &req.cmd, "reason" => %r.why, "why" => r.why.reason());
                self.answer(
                    &self.refusal(&req.uuid, Some(&req.cmd), r.why.to_string()),
                    r.client.as_ref(),
                    r.request_id,
                    signed,
                );
                return;
            }
        };
        let (client, request_id) = (admitted.client, admitted.request_id);
        if let Err(why) = self.check(&req) {
            warn!(self.log, "request refused"; "uuid" => &req.uuid, "service" => &req.service,
                "cmd" => &req.cmd, "reason" => %why, "why" => why.reason());
            self.answer(
                &self.refusal(&req.uuid, Some(&req.cmd), why.to_string()),
                client.as_ref(),
                request_id,
                signed,
            );
            return;
        }
        let Some(backend) = self.backend.clone() else {
            let mut r = self.refusal(
                &req.uuid,
                Some(&req.cmd),
                "Unable to determine location to service(8)".into(),
            );
            r.status = Some(Status::Failed);
            self.answer(&r, client.as_ref(), request_id, signed);
            return;
        };
        if self.config.self_services.contains(&req.service) && req.cmd != "status" {
            self.run_on_self(&backend, &req, client.as_ref(), request_id);
            return;
        }
        info!(self.log, "running request"; "uuid" => &req.uuid, "service" => &req.service, "cmd" => &req.cmd,
            "client" => client.as_ref().map(|c| c.name().to_owned()).unwrap_or_else(|| "unsigned".into()));
        self.running += 1;
        let job = self.next_job;
        self.next_job += 1;
        let cancel = exec::Cancel::default();
        self.jobs.insert(
            job,
            Job {
                via: self.via,
                uuid: req.uuid.clone(),
                also: Vec::new(),
                cmd: req.cmd.clone(),
                client: client.clone(),
                request_id: request_id.clone(),
                signed,
                cancel: cancel.clone(),
            },
        );
        let stop_timeout = self.config.stop_timeout;
        let ctx = self.ctx.clone();
        let inbox = self.inbox_endpoint.clone();
        let me = Arc::clone(&self.me);
        let key = Arc::clone(&self.guard.key);
        let timeout = Duration::from_secs(self.config.command_timeout);
        let cap = self.config.max_output as usize;
        let log = self.log.clone();
        let metrics = self.metrics.clone();
        let hold_until = self.hold_until;
        thread::spawn(move || {
            let mut result = execute(&backend, &me, &req, timeout, cap, &cancel);
            if result.status == Some(Status::Interrupted) {
                result.msg = interrupted_why(stop_timeout);
            }
            metrics.record(&result);
            if let Some(due) = hold_until {
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let frame = guard::result_frame(&key, &result, client.as_ref(), request_id, signed);
            let sent = transport::socket(&ctx, zmq::PUSH).and_then(|s| {
                s.set_linger(-1)?;
                s.connect(&inbox)?;
                s.send(job.to_be_bytes().as_slice(), zmq::SNDMORE)?;
                s.send(frame, zmq::SNDMORE)?;
                // Kept by the main thread, for a manager that asks again.
                s.send(p::encode(&result), 0)?;
                Ok(())
            });
            if let Err(e) = sent {
                error!(log, "worker could not hand back its result"; "uuid" => &req.uuid, "error" => %e);
            }
        });
    }

    /// Send a result: signed and sealed to `client` when we know it.
    fn answer(
        &mut self,
        r: &ResultMsg,
        client: Option<&security::PublicKey>,
        request_id: Option<String>,
        signed: bool,
    ) {
        self.metrics.record(r);
        if let Some(id) = &request_id {
            let answer = answers::Answer {
                result: r.clone(),
                client: client.cloned(),
                signed,
            };
            self.answers.remember(id, answer);
        }
        let frame = guard::result_frame(&self.guard.key, r, client, request_id, signed);
        self.send_result_frame(r.uuid.as_deref(), frame);
    }

    /// `stop`/`restart` of the agent's own service would kill us before we
    /// answer: answer first, then run the command detached a moment later.
    fn run_on_self(
        &mut self,
        backend: &Backend,
        req: &Dispatch,
        client: Option<&security::PublicKey>,
        request_id: Option<String>,
    ) {
        let delay = Duration::from_secs(1);
        let outcome = exec::spawn_detached(backend, &req.service, &req.cmd, delay);
        let mut r = self.refusal(&req.uuid, Some(&req.cmd), String::new());
        match outcome {
            Ok(()) => {
                r.msg = format!(
                    "Scheduled service {} request: the agent's own service; it runs in {} s, after this answer",
                    req.cmd,
                    delay.as_secs()
                );
                r.success = None;
                r.status = Some(Status::Ok);
                info!(self.log, "own service command scheduled"; "uuid" => &req.uuid, "cmd" => &req.cmd);
            }
            Err(e) => {
                r.msg = format!(
                    "cannot schedule {} of the agent's own service: {e}",
                    req.cmd
                );
                r.status = Some(Status::Failed);
            }
        }
        self.answer(&r, client, request_id, req.auth.is_some());
    }

    fn check(&self, req: &Dispatch) -> Result<(), guard::Refusal> {
        if self.stop {
            return Err(guard::Refusal::Stopping);
        }
        check_request(self.config, self.running, req)
    }

    fn refusal(&self, uuid: &str, cmd: Option<&str>, why: String) -> ResultMsg {
        refusal(&self.me.node, uuid, cmd, why)
    }

    /// A handshake with the manager failed: say why where the operator looks,
    /// and connect again every 5 s (a key accepted later, a manager back with
    /// its key), since libzmq does not.
    fn check_handshakes(&mut self) {
        for (mi, m) in self.managers.iter().enumerate() {
            for (si, w) in m.watches.iter().enumerate() {
                let Some(refused) = w.failed() else { continue };
                if self
                    .reconnect_at
                    .iter()
                    .any(|&(_, a, b)| (a, b) == (mi, si))
                {
                    continue;
                }
                if refused {
                    warn!(self.log, "the manager refused our key; accept it on the manager's host \
                        (service-mgr mgmt keys accept), retrying every 5 s";
                        "key" => self.guard.key.public().fingerprint(), "endpoint" => m.uplink.endpoint());
                } else {
                    error!(self.log, "the encrypted handshake with the manager failed: it does not \
                        hold the key we pinned (set manager_key to its manager.key.pub); retrying every 5 s";
                        "pinned" => &m.described, "endpoint" => m.uplink.endpoint());
                }
                self.reconnect_at
                    .push((Instant::now() + Duration::from_secs(5), mi, si));
            }
        }
        let now = Instant::now();
        let due: Vec<(usize, usize)> = self
            .reconnect_at
            .iter()
            .filter(|(t, ..)| now >= *t)
            .map(|&(_, mi, si)| (mi, si))
            .collect();
        self.reconnect_at.retain(|(t, ..)| now < *t);
        for (mi, si) in due {
            let Some((s, ep)) = self
                .managers
                .get(mi)
                .and_then(|m| m.uplink.sockets().get(si).copied())
            else {
                continue;
            };
            let _ = s.disconnect(ep);
            if let Err(e) = s.connect(ep) {
                error!(self.log, "cannot connect again"; "endpoint" => ep, "error" => %e);
            }
        }
    }

    /// ZAP for our management socket: our own key and the authorized
    /// clients' keys may connect; what they may do is still checked per command.
    fn answer_handshakes(&mut self) {
        let Some(zap) = &self.zap else { return };
        self.guard.reload_if_changed(self.log, false);
        let own = self.guard.key.public().curve_key();
        let guard = &self.guard;
        let log = self.log;
        let answered = zap.answer_waiting(|req| match &req.mechanism {
            crate::zap::Mechanism::Curve { client_key }
                if *client_key == own || guard.client_by_curve(client_key).is_some() =>
            {
                crate::zap::Verdict::Allow {
                    user_id: crate::manager::peers::user_id(client_key),
                }
            }
            _ => {
                info!(log, "management connection refused: not an authorized client key";
                    "address" => &req.address);
                crate::zap::Verdict::Deny {
                    reason: "not an authorized client key".into(),
                }
            }
        });
        if let Err(e) = answered {
            error!(self.log, "ZAP handler failed"; "error" => %e);
        }
    }

    fn on_mgmt(&mut self, frames: Vec<Vec<u8>>) {
        let reply = mgmt::answer(&frames, |req| self.mgmt_command(req));
        if let Err(e) = self.mgmt.send(reply, 0) {
            warn!(self.log, "cannot answer management request"; "error" => %e);
        }
    }

    fn mgmt_command(&mut self, req: &MgmtRequest) -> MgmtReply {
        match req.cmd.as_str() {
            p::AGENT_STATUS => MgmtReply::with(
                "Service Manager Agent Status",
                &AgentStatus {
                    status: if self.stop { "stopping" } else { "running" }.into(),
                    uname: self.host.uname(),
                    manager_endpoint: self.config.manager_endpoint.clone(),
                    sink_endpoint: self.config.sink_endpoint.clone(),
                    mgmt_endpoint: self.config.mgmt_endpoint.clone(),
                    node: self.me.node.clone(),
                    topics: self.me.topics.clone(),
                    running: self.running,
                    instance: self.instance.clone(),
                    service_manager: self
                        .backend
                        .as_ref()
                        .map(|b| b.program().display().to_string()),
                    version: env!("CARGO_PKG_VERSION").into(),
                    unacknowledged: self.outbox.as_ref().map(outbox::Outbox::len),
                    unacknowledged_dropped: self.outbox.as_ref().map(outbox::Outbox::dropped),
                },
            ),
            p::AGENT_SHUTDOWN => {
                if let Some(auth) = &req.auth {
                    if !self.guard.knows_client(&auth.key) {
                        self.guard.reload_if_changed(self.log, true);
                    }
                }
                let allowed = self.guard.admit_mgmt(req, &self.me.node);
                match &allowed {
                    Ok(()) => {
                        info!(self.log, "shutdown requested on the management socket");
                        self.stop = true;
                    }
                    Err(why) => {
                        warn!(self.log, "shutdown refused"; "reason" => %why, "why" => why.reason())
                    }
                }
                MgmtReply::shutdown(&allowed, AGENT_SHUTTING_DOWN)
            }
            other => MgmtReply::unknown(other, "agent", AGENT_COMMANDS),
        }
    }
}

/// What an agent answers to a shutdown it accepts.
pub(crate) const AGENT_SHUTTING_DOWN: &str = "Service Manager Agent is shutting down";
/// The management commands an agent knows.
pub(crate) const AGENT_COMMANDS: &[&str] = &[p::AGENT_STATUS, p::AGENT_SHUTDOWN];

/// The agent's management socket, bound; returns it with the bound endpoint.
pub(crate) fn bind_mgmt(
    ctx: &zmq::Context,
    config: &AgentConfig,
    curve: Option<&security::KeyPair>,
) -> Result<(zmq::Socket, String)> {
    let mgmt = transport::socket(ctx, zmq::REP)?;
    if let Some(key) = curve {
        transport::serve_curve(&mgmt, key, "agent-mgmt")?;
    }
    mgmt.set_maxmsgsize(p::HARD_FRAME_LIMIT)?;
    let endpoint = transport::bind(
        &mgmt,
        &config.mgmt_endpoint,
        "mgmt_endpoint",
        "service-mgr-agentd",
    )?;
    Ok((mgmt, endpoint))
}

/// The agent's own checks; it trusts neither the manager nor the client.
pub(crate) fn check_request(
    config: &AgentConfig,
    running: usize,
    req: &Dispatch,
) -> Result<(), guard::Refusal> {
    if running >= config.max_concurrent as usize {
        return Err(guard::Refusal::Busy(running));
    }
    p::check_service_name(&req.service)?;
    p::check_command_word(&req.cmd)?;
    if !config.allowed_commands.iter().any(|c| c == &req.cmd) {
        return Err(guard::Refusal::NotAllowed {
            cmd: req.cmd.clone(),
            allowed: config.allowed_commands.join(", "),
        });
    }
    Ok(())
}

/// A `refused` answer: 0.1's error shape plus the node and status.
pub(crate) fn refusal(node: &str, uuid: &str, cmd: Option<&str>, why: String) -> ResultMsg {
    ResultMsg {
        msg: why,
        success: Some(-1),
        result: None,
        uuid: Some(uuid.to_owned()),
        v: Some(p::PROTOCOL_VERSION),
        node: Some(node.to_owned()),
        status: Some(Status::Refused),
        cmd: cmd.map(str::to_owned),
        duration_ms: Some(0),
        truncated: false,
        state: None,
    }
}

/// The hello/heartbeat/bye message of an agent.
pub fn announcement(
    kind: AnnounceKind,
    me: &Identity,
    host: &HostInfo,
    instance: &str,
    started_ms: u64,
    interval_ms: u64,
    running: usize,
) -> Announce {
    Announce {
        kind,
        v: p::PROTOCOL_VERSION,
        node: me.node.clone(),
        instance: instance.to_owned(),
        system: me.system.clone(),
        release: host.release.clone(),
        os_version: me.version.clone(),
        topics: me.topics.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        started_ms,
        interval_ms,
        running,
        auth: None,
        uuid: crate::protocol::ANNOUNCE_UUID.to_owned(),
    }
}

/// Why a command has no result of its own: the agent stopped.
fn interrupted_why(stop_timeout: u64) -> String {
    format!(
        "interrupted: the agent stopped and the command was still running after stop_timeout ({stop_timeout} s) or a second SIGTERM; its process group was killed"
    )
}

/// Run one checked request and build its result.
fn execute(
    backend: &Backend,
    me: &Identity,
    req: &Dispatch,
    timeout: Duration,
    cap: usize,
    cancel: &exec::Cancel,
) -> ResultMsg {
    let outcome = exec::run(backend, &req.service, &req.cmd, timeout, cap, cancel)
        .map_err(|e| format!("cannot run {}: {e}", backend.program().display()));
    executed(me, req, outcome)
}

/// The result of a request that ran (the 0.1 shape plus ours), or of one that
/// could not be started (`Err`: why).
pub(crate) fn executed(
    me: &Identity,
    req: &Dispatch,
    outcome: Result<exec::Outcome, String>,
) -> ResultMsg {
    let base = ResultMsg {
        msg: format!("Executed service {} request", req.cmd),
        success: None,
        result: None,
        uuid: Some(req.uuid.clone()),
        v: Some(p::PROTOCOL_VERSION),
        node: Some(me.node.clone()),
        status: None,
        cmd: Some(req.cmd.clone()),
        duration_ms: None,
        truncated: false,
        state: None,
    };
    // A 0.1 client (no `v`, unsigned) gets its outputs as 0.1 sent them:
    // lists of lines, so that its `stdout[0]` keeps working (issue 15).
    let output = |text: String| {
        if req.v.is_none() && req.auth.is_none() {
            Output::lines_01(&text)
        } else {
            Output::Text(text)
        }
    };
    match outcome {
        Ok(o) => ResultMsg {
            status: Some(if o.interrupted {
                Status::Interrupted
            } else if o.timed_out {
                Status::Timeout
            } else if o.returncode == 0 {
                Status::Ok
            } else {
                Status::Failed
            }),
            duration_ms: Some(o.duration.as_millis() as u64),
            truncated: o.truncated,
            state: (req.cmd == "status" && !o.timed_out && !o.interrupted)
                .then(|| ServiceState::from_status(o.returncode, &o.stdout, &o.stderr)),
            result: Some(ExecResult {
                node: me.node.clone(),
                service: req.service.clone(),
                returncode: o.returncode,
                stdout: output(o.stdout),
                stderr: output(o.stderr),
                system: me.system.clone(),
                version: me.version.clone(),
            }),
            ..base
        },
        Err(why) => ResultMsg {
            msg: why,
            success: Some(-1),
            status: Some(Status::Failed),
            ..base
        },
    }
}
