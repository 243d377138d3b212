//! The manager daemon (`service-mgrd`): takes requests from clients, publishes
//! them to agents, collects results on the sink and republishes them to the
//! client that asked.
//!
//! One thread owns every socket and polls them together with the control fd.
//! Fixes over 0.1 that live here:
//! - the backend XPUB runs in manual mode and stores each subscription with a
//!   terminator, so topics match exactly instead of by prefix;
//! - the result publisher is an XPUB too: results of a job are held until the
//!   client's subscription to the job id arrives, so none is lost to the race
//!   between dispatch and subscribe;
//! - agents register (see [`registry`]); each request names the nodes expected
//!   to answer, and a node that goes away gets a `no_response` result at once.

pub mod registry;
pub mod trust;

use crate::clock::now_ms;
use crate::config::ManagerConfig;
use crate::host::HostInfo;
use crate::jobstore::{JobStore, StoreEvent};
use crate::protocol::{
    self as p, Accepted, Dispatch, ErrorReply, MgmtReply, ResultMsg, ServiceRequest, SinkMessage,
    Status,
};
use crate::runtime::{Control, OnReady};
use crate::transport::{self, try_recv};
use anyhow::{Context, Result};
use registry::{Departure, Registry};
use serde::Serialize;
use serde_json::{json, Value};
use slog::{debug, error, info, warn, Logger};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use trust::Gate;

/// The endpoints the manager really bound (ports resolved), for the ready
/// notification and `manager.status`.
#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    pub frontend_endpoint: String,
    pub backend_endpoint: String,
    pub sink_endpoint: String,
    pub mgmt_endpoint: String,
    pub result_endpoint: String,
    pub result_publisher_port: u16,
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
    /// Whether a client is subscribed to the job id right now.
    subscribed: bool,
}

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
        &config.state_dir().join("keys"),
        config.allow_unsigned,
        Duration::from_secs(config.request_window),
    )?;
    if config.allow_unsigned {
        warn!(log, "allow_unsigned is on: unsigned 0.1 clients and agents are served; anyone who reaches the ports can run requests");
    }
    let store = JobStore::open(&config.state_dir().join("jobs.redb"))?;
    let ctx = zmq::Context::new();
    // libzmq cancels timers by a linear scan per I/O thread, and every ZMTP
    // heartbeat arms one per connection: with a fleet on one thread that scan
    // dominated the profile. One I/O thread per core, at most 4.
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    ctx.set_io_threads(cores as i32)?;
    let (sockets, bound) = bind_all(&ctx, config)?;
    let mut doc = serde_json::to_value(&bound)?;
    doc["pid"] = json!(std::process::id());
    on_ready(&doc)?;
    info!(log, "service manager started";
        "frontend" => &bound.frontend_endpoint, "backend" => &bound.backend_endpoint,
        "sink" => &bound.sink_endpoint, "mgmt" => &bound.mgmt_endpoint,
        "results" => &bound.result_endpoint);
    let mut mgr = Manager {
        config,
        log,
        s: sockets,
        bound,
        jobs: HashMap::new(),
        registry: Registry::default(),
        gate,
        store,
        events: Vec::new(),
        answered: HashMap::new(),
        presence: HashMap::new(),
        host: HostInfo::read(),
        subscriptions: HashMap::new(),
        stop: false,
    };
    mgr.serve(control)?;
    info!(log, "service manager stopped");
    Ok(())
}

fn bind_all(ctx: &zmq::Context, config: &ManagerConfig) -> Result<(Sockets, Bound)> {
    const PROG: &str = "service-mgrd";
    let frontend = transport::socket(ctx, zmq::ROUTER)?;
    frontend.set_maxmsgsize(p::HARD_FRAME_LIMIT)?;
    let mut backend = transport::socket(ctx, zmq::XPUB)?;
    transport::set_xpub_manual(&mut backend)?;
    backend.set_sndhwm(100_000)?;
    // Dead peers (a cut cable sends no FIN) are dropped within seconds, which
    // ends their presence subscription.
    transport::set_heartbeats(&backend)?;
    // A whole fleet connects at once after a manager restart: libzmq's default
    // listen backlog of 100 made the kernel drop most handshakes.
    backend.set_backlog(4096)?;
    let sink = transport::socket(ctx, zmq::PULL)?;
    sink.set_backlog(4096)?;
    sink.set_maxmsgsize(p::RESULT_LIMIT as i64)?;
    sink.set_rcvhwm(100_000)?;
    let mgmt = transport::socket(ctx, zmq::REP)?;
    mgmt.set_maxmsgsize(p::HARD_FRAME_LIMIT)?;
    let results = transport::socket(ctx, zmq::XPUB)?;
    // Every subscription is reported, so a second subscriber to a job gets its results too.
    results.set_xpub_verbose(true)?;
    results.set_sndhwm(100_000)?;
    // Results already published still go out when we stop.
    results.set_linger(2000)?;

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
    config: &'a ManagerConfig,
    log: &'a Logger,
    s: Sockets,
    bound: Bound,
    jobs: HashMap<String, Job>,
    registry: Registry,
    gate: Gate,
    /// Every job, its expected nodes and each result, kept across restarts.
    store: JobStore,
    /// Store events of this round of the loop, written in one transaction.
    events: Vec<StoreEvent>,
    /// Signed request id -> the answer it got, so that a client's retry of the
    /// same signed bytes gets that answer again instead of "replayed".
    answered: HashMap<String, (Instant, Accepted)>,
    /// instance -> its current presence token, so a refreshed token's old
    /// unsubscription is not taken for a disconnect.
    presence: HashMap<String, String>,
    host: HostInfo,
    /// Agent subscriptions by topic (how many pipes), as reported by the backend.
    subscriptions: HashMap<String, usize>,
    stop: bool,
}

impl Manager<'_> {
    fn serve(&mut self, control: &Control) -> Result<()> {
        let mut last_sweep = Instant::now();
        let mut last_expire: Option<Instant> = None;
        while !self.stop {
            let mut items = [
                self.s.frontend.as_poll_item(zmq::POLLIN),
                self.s.backend.as_poll_item(zmq::POLLIN),
                self.s.sink.as_poll_item(zmq::POLLIN),
                self.s.mgmt.as_poll_item(zmq::POLLIN),
                self.s.results.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(control.fd(), zmq::POLLIN),
            ];
            transport::poll(&mut items, 250)?;
            let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
            let wake = control.take();
            if wake.reopen_logs {
                info!(self.log, "SIGHUP: log file reopened");
            }
            if wake.shutdown {
                info!(self.log, "shutting down on request");
                self.stop = true;
            }
            // Subscriptions first: a result that arrives in the same round can then go straight out.
            if ready[1] {
                self.drain(Self::on_backend_subscription, |s| &s.backend);
            }
            if ready[4] {
                self.drain(Self::on_result_subscription, |s| &s.results);
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
            if last_sweep.elapsed() >= Duration::from_millis(250) {
                for d in self.registry.sweep() {
                    self.departed(d);
                }
                match self.gate.reload_if_changed() {
                    Ok(true) => info!(self.log, "key store changed; reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        error!(self.log, "cannot reload the key store"; "error" => format!("{e:#}"))
                    }
                }
                self.expire_jobs();
                last_sweep = Instant::now();
            }
            if last_expire.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                let cutoff =
                    now_ms().saturating_sub(self.config.job_retention.saturating_mul(1000));
                match self.store.expire(cutoff) {
                    Ok(0) => {}
                    Ok(n) => info!(self.log, "expired old jobs from the job store"; "jobs" => n),
                    Err(e) => {
                        error!(self.log, "cannot expire old jobs"; "error" => format!("{e:#}"))
                    }
                }
                last_expire = Some(Instant::now());
            }
            self.write_events();
        }
        // Results already on their way in are still delivered.
        self.drain(Self::on_result_subscription, |s| &s.results);
        self.drain(Self::on_sink, |s| &s.sink);
        self.write_events();
        if let Err(e) = self.store.flush() {
            error!(self.log, "cannot flush the job store"; "error" => format!("{e:#}"));
        }
        Ok(())
    }

    /// One transaction for everything that happened in this round.
    fn write_events(&mut self) {
        if self.events.is_empty() {
            return;
        }
        if let Err(e) = self.store.apply(&self.events) {
            // The results still went to the client; only the record is incomplete.
            error!(self.log, "cannot write to the job store"; "events" => self.events.len(),
                "error" => format!("{e:#}"));
        }
        self.events.clear();
    }

    /// Handle every queued message of one socket, up to a bound so that one
    /// busy socket cannot starve the others.
    fn drain(&mut self, handle: fn(&mut Self, Vec<Vec<u8>>), sock: fn(&Sockets) -> &zmq::Socket) {
        for _ in 0..1000 {
            match try_recv(sock(&self.s)) {
                Ok(Some(frames)) => handle(self, frames),
                Ok(None) => return,
                Err(e) => {
                    error!(self.log, "receive failed"; "error" => %e);
                    return;
                }
            }
        }
    }

    fn on_frontend(&mut self, frames: Vec<Vec<u8>>) {
        // A REQ client sends [identity, "", body]; a DEALER may omit the empty delimiter.
        let (prefix_len, body) = match frames.iter().position(Vec::is_empty) {
            Some(i) => (i + 1, &frames[i + 1..]),
            None => (1, &frames[1.min(frames.len())..]),
        };
        let reply = match body {
            [one] => self.accept(one),
            _ => Err(ErrorReply::new(format!(
                "expected one JSON frame after the envelope, got {}",
                body.len()
            ))),
        };
        let payload = match reply {
            Ok(v) => v,
            Err(e) => {
                warn!(self.log, "request refused"; "reason" => &e.msg);
                p::encode(&e)
            }
        };
        let mut out: Vec<&[u8]> = frames[..prefix_len].iter().map(Vec::as_slice).collect();
        out.push(&payload);
        if let Err(e) = self.s.frontend.send_multipart(out, zmq::DONTWAIT) {
            warn!(self.log, "cannot answer client"; "error" => %e);
        }
    }

    /// Answer a frontend frame: a new request, or `{"job": ID}` to follow an earlier one.
    fn accept(&mut self, body: &[u8]) -> Result<Vec<u8>, ErrorReply> {
        if let Ok(m) = p::decode_object(body, p::REQUEST_LIMIT) {
            if let Some(job) = m.get("job") {
                let id = job
                    .as_str()
                    .ok_or_else(|| ErrorReply::new("field `job` must be a string"))?;
                return self.follow(id);
            }
        }
        let req = ServiceRequest::decode(body).map_err(ErrorReply::new)?;
        self.dispatch(req).map(|a| p::encode(&a))
    }

    /// Re-attach a client to a job: one still in memory is replayed on the
    /// result publisher (and its missing answers still arrive); an older one is
    /// answered from the job store in one reply.
    fn follow(&self, uuid: &str) -> Result<Vec<u8>, ErrorReply> {
        let Some(job) = self.jobs.get(uuid) else {
            let record = self
                .store
                .get(uuid)
                .map_err(|e| ErrorReply::new(format!("cannot read the job store: {e:#}")))?
                .ok_or_else(|| ErrorReply::new(format!("no job {uuid} in the job store")))?;
            let keys: std::collections::BTreeMap<String, String> = record
                .expected
                .iter()
                .filter_map(|n| Some((n.clone(), self.registry.get(n)?.key.clone()?)))
                .collect();
            return Ok(p::encode(
                &json!({"v": p::PROTOCOL_VERSION, "uuid": uuid, "agent_keys": keys, "record": record}),
            ));
        };
        Ok(p::encode(&Accepted {
            uuid: uuid.to_owned(),
            port: self.bound.result_publisher_port,
            v: Some(p::PROTOCOL_VERSION),
            expected: Some(job.expected.clone()),
            unregistered: None,
            agent_keys: Some(
                job.expected
                    .iter()
                    .filter_map(|n| Some((n.clone(), self.registry.get(n)?.key.clone()?)))
                    .collect(),
            ),
        }))
    }

    /// Validate a request, decide who must answer, publish it and say where results appear.
    fn dispatch(&mut self, req: ServiceRequest) -> Result<Accepted, ErrorReply> {
        let (client, request_id) = match self.gate.check_request(&req) {
            Ok(Some((key, id))) => (Some(key), Some(id)),
            Ok(None) => (None, None),
            Err(trust::Refused::Replayed(id, msg)) => {
                return self
                    .answered
                    .get(&id)
                    .map(|(_, a)| a.clone())
                    .ok_or_else(|| ErrorReply::new(msg));
            }
            Err(trust::Refused::Other(msg)) => return Err(ErrorReply::new(msg)),
        };
        if !p::valid_topic(&req.topic) {
            return Err(ErrorReply::new(format!(
                "topic {:?} is not a valid topic (printable, no blanks or commas, 1 to 255 bytes)",
                req.topic
            )));
        }
        p::check_service_name(&req.service).map_err(ErrorReply::new)?;
        p::check_command_word(&req.cmd).map_err(ErrorReply::new)?;
        let glob = match &req.glob {
            Some(g) => Some(
                globset::Glob::new(g)
                    .map_err(|e| {
                        ErrorReply::new(format!("glob {g:?} is not a valid pattern: {e}"))
                    })?
                    .compile_matcher(),
            ),
            None => None,
        };
        if let Some(nodes) = &req.nodes {
            if let Some(bad) = nodes.iter().find(|n| !p::valid_topic(n)) {
                return Err(ErrorReply::new(format!(
                    "node {bad:?} is not a valid node name"
                )));
            }
        }
        // Who must answer: up agents on the topic, narrowed by the glob. An
        // explicit node list is taken as is, less known nodes outside the topic:
        // unknown nodes are asked too (they may be 0.1 agents) and reported.
        let narrowed = req.nodes.is_some() || req.glob.is_some();
        let expected: BTreeSet<String> = match &req.nodes {
            None => self
                .registry
                .matching(&req.topic, glob.as_ref())
                .into_iter()
                .collect(),
            Some(nodes) => nodes
                .iter()
                .filter(|n| match self.registry.get(n) {
                    None => true,
                    Some(e) => {
                        e.topics.contains(&req.topic)
                            && glob.as_ref().is_none_or(|g| g.is_match(n.as_str()))
                    }
                })
                .cloned()
                .collect(),
        };
        let unregistered = if narrowed || !self.gate.allow_unsigned {
            0
        } else {
            let subscribed = self.subscriptions.get(&req.topic).copied().unwrap_or(0);
            subscribed.saturating_sub(self.registry.count_with_topic(&req.topic))
        };
        let expected: Vec<String> = expected.into_iter().collect();
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let agent_keys = expected
            .iter()
            .filter_map(|n| Some((n.clone(), self.registry.get(n)?.key.clone()?)))
            .collect();
        let accepted = Accepted {
            uuid: uuid.clone(),
            port: self.bound.result_publisher_port,
            v: Some(p::PROTOCOL_VERSION),
            expected: Some(expected.clone()),
            unregistered: Some(unregistered),
            agent_keys: Some(agent_keys),
        };
        if req.dry_run {
            return Ok(accepted);
        }
        let dispatch = Dispatch {
            cmd: req.cmd.clone(),
            service: req.service.clone(),
            topic: req.topic.clone(),
            uuid: uuid.clone(),
            v: Some(p::PROTOCOL_VERSION),
            auth: req.auth.clone(),
        };
        let body = p::encode(&dispatch);
        // Secure mode: each admitted agent on its private topic. Otherwise narrowed
        // requests go to each node's own topic and the rest is one broadcast.
        let private: Vec<String>;
        let topics: Vec<&str> = if !self.gate.allow_unsigned {
            private = expected
                .iter()
                .filter_map(|n| self.registry.get(n))
                .map(|e| p::private_topic(&e.node, &e.instance))
                .collect();
            private.iter().map(String::as_str).collect()
        } else if narrowed {
            expected.iter().map(String::as_str).collect()
        } else {
            vec![req.topic.as_str()]
        };
        for t in &topics {
            let topic = p::backend_topic(t);
            if let Err(e) = self
                .s
                .backend
                .send_multipart([topic.as_slice(), &body], zmq::DONTWAIT)
            {
                return Err(ErrorReply::new(format!("cannot dispatch the request: {e}")));
            }
        }
        // Nodes we know are down will not answer: say so at once.
        let mut job = Job {
            created: Instant::now(),
            created_ms: now_ms(),
            request: req,
            expected: expected.clone(),
            pending: expected.iter().cloned().collect(),
            results: Vec::new(),
            subscribed: false,
        };
        // Known but down, or (secure mode) not an admitted agent at all: they
        // were not sent the request, so they are answered for at once.
        let unreachable = |n: &&String| {
            !self.registry.is_up(n) && (self.registry.get(n).is_some() || !self.gate.allow_unsigned)
        };
        let down: Vec<String> = expected.iter().filter(unreachable).cloned().collect();
        let mut request = serde_json::to_value(&job.request).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut request {
            m.remove("auth"); // the record keeps what was asked, not the signature
        }
        self.events.push(StoreEvent::NewJob {
            uuid: uuid.clone(),
            created_ms: job.created_ms,
            request,
            expected: expected.clone(),
        });
        for n in down {
            let why = match self.registry.get(&n) {
                Some(_) => "the agent is not connected to the manager",
                None => "no such agent: none by that name is connected with an accepted key",
            };
            let r = ResultMsg::no_response(&uuid, &n, why);
            job.pending.remove(&n);
            job.results.push(p::encode(&r));
            self.events.push(StoreEvent::NoResponse {
                uuid: uuid.clone(),
                node: n,
                at_ms: now_ms(),
            });
        }
        info!(self.log, "request dispatched"; "uuid" => &uuid, "topic" => &job.request.topic,
            "client" => client.as_ref().map(|k| k.to_string()).unwrap_or_else(|| "unsigned".into()),
            "cmd" => &job.request.cmd, "service" => &job.request.service, "expected" => expected.len(),
            "unregistered" => unregistered);
        self.jobs.insert(uuid, job);
        if let Some(id) = request_id {
            self.answered.insert(id, (Instant::now(), accepted.clone()));
        }
        Ok(accepted)
    }

    /// Manual XPUB: subscribe the agent's pipe to the topic plus terminator,
    /// and watch presence subscriptions for agents that disconnect.
    fn on_backend_subscription(&mut self, frames: Vec<Vec<u8>>) {
        let Some(frame) = frames.first() else { return };
        let Some((&kind, topic)) = frame.split_first() else {
            return;
        };
        let shown = String::from_utf8_lossy(topic).into_owned();
        if let Some(presence) = p::Presence::parse(&shown) {
            self.on_presence(kind == 1, presence, &shown);
            return;
        }
        if shown.starts_with('!') {
            return; // reserved prefixes are never granted as topics
        }
        if !self.gate.allow_unsigned {
            // Secure mode: plain topics are not granted; agents get requests on
            // their private topic once they proved their key.
            let n = self.subscriptions.entry(shown.clone()).or_default();
            *n = if kind == 1 {
                *n + 1
            } else {
                n.saturating_sub(1)
            };
            return;
        }
        let mut stored = topic.to_vec();
        stored.push(p::TOPIC_TERMINATOR);
        let rc = match kind {
            1 => {
                debug!(self.log, "agent subscribed"; "topic" => &shown);
                *self.subscriptions.entry(shown).or_default() += 1;
                self.s.backend.set_subscribe(&stored)
            }
            0 => {
                debug!(self.log, "agent unsubscribed"; "topic" => &shown);
                if let Some(n) = self.subscriptions.get_mut(&shown) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.subscriptions.remove(&shown);
                    }
                }
                self.s.backend.set_unsubscribe(&stored)
            }
            _ => Ok(()),
        };
        if let Err(e) = rc {
            warn!(self.log, "cannot apply subscription"; "error" => %e);
        }
    }

    /// A presence subscription arrived or ended. Signed and valid: grant the
    /// connection its private topic. Ended: the agent's connection is gone.
    fn on_presence(&mut self, subscribed: bool, presence: p::Presence, token: &str) {
        let instance = presence.instance.clone();
        if !subscribed {
            // A refreshed token's old one going away is not a disconnect.
            if self.presence.get(&instance).map(String::as_str) == Some(token) {
                self.presence.remove(&instance);
                if let Some(d) = self.registry.disconnected(&instance) {
                    self.departed(d);
                }
            }
            return;
        }
        let node = match self.gate.check_presence(&presence) {
            trust::Grant::No => {
                debug!(self.log, "presence not granted (unsigned, stale or key not accepted)"; "instance" => &instance);
                return;
            }
            trust::Grant::Plain => {
                // 0.1-compatible mode: present, served on its plain topics.
                self.presence.insert(instance.clone(), token.to_owned());
                self.registry.connected(&instance, None);
                return;
            }
            trust::Grant::Private(node) => node,
        };
        // Only a granted token stands for the connection: a stranger's cannot end it.
        self.presence.insert(instance.clone(), token.to_owned());
        let mut private = p::private_topic(&node, &instance).into_bytes();
        private.push(p::TOPIC_TERMINATOR);
        if let Err(e) = self.s.backend.set_subscribe(&private) {
            warn!(self.log, "cannot grant the private topic"; "error" => %e);
            return;
        }
        // Tells the agent it is admitted, so it stops renewing its token often.
        let welcome = p::encode(&json!({"type": "manager.welcome", "v": p::PROTOCOL_VERSION}));
        let _ = self
            .s
            .backend
            .send_multipart([private.as_slice(), &welcome], zmq::DONTWAIT);
        self.registry.connected(&instance, Some(node));
    }

    /// A client subscribed to (or left) a job id: deliver what is held for it.
    fn on_result_subscription(&mut self, frames: Vec<Vec<u8>>) {
        let Some(frame) = frames.first() else { return };
        let Some((&kind, topic)) = frame.split_first() else {
            return;
        };
        let uuid = String::from_utf8_lossy(topic).into_owned();
        let Some(job) = self.jobs.get_mut(&uuid) else {
            debug!(self.log, "subscription to unknown job"; "uuid" => &uuid);
            return;
        };
        if kind == 0 {
            job.subscribed = false;
            return;
        }
        job.subscribed = true;
        for frame in &job.results {
            publish(&self.s.results, self.log, &uuid, frame);
        }
    }

    fn on_sink(&mut self, frames: Vec<Vec<u8>>) {
        let [frame] = frames.as_slice() else {
            warn!(self.log, "sink message dropped: expected one frame"; "frames" => frames.len());
            return;
        };
        match SinkMessage::decode(frame) {
            Ok(SinkMessage::Announce(a)) => {
                let (key, a) = match self.gate.check_announce(&a) {
                    Ok((k, signed)) => (k.map(|k| k.to_string()), signed),
                    Err(why) => {
                        if a.kind == p::AnnounceKind::Hello {
                            warn!(self.log, "agent not admitted"; "node" => &a.node, "why" => why);
                        }
                        return;
                    }
                };
                if !self.registry.is_up(&a.node) && a.kind != p::AnnounceKind::Bye {
                    info!(self.log, "agent up"; "node" => &a.node, "system" => &a.system,
                        "topics" => a.topics.join(","), "version" => &a.agent_version);
                }
                if let Some(d) = self.registry.announce(&a, key) {
                    self.departed(d);
                }
            }
            Ok(SinkMessage::Result {
                uuid,
                node,
                status,
                auth,
                body,
            }) => {
                if let Err(why) = self
                    .gate
                    .check_result(auth.as_ref(), &uuid, node.as_deref())
                {
                    warn!(self.log, "result not accepted"; "uuid" => &uuid, "node" => ?node, "why" => why);
                    return;
                }
                self.on_result(uuid, node, status, frame.clone(), body)
            }
            Err(e) => {
                // Nothing can route it; say so loudly rather than lose it silently.
                warn!(self.log, "sink message dropped"; "reason" => %e,
                    "start" => %String::from_utf8_lossy(&frame[..frame.len().min(200)]));
            }
        }
    }

    fn on_result(
        &mut self,
        uuid: String,
        node: Option<String>,
        status: Status,
        frame: Vec<u8>,
        body: Value,
    ) {
        debug!(self.log, "result received"; "uuid" => &uuid, "node" => ?node, "status" => status.as_str());
        let publish_now = match self.jobs.get_mut(&uuid) {
            Some(job) => {
                if let Some(n) = &node {
                    job.pending.remove(n);
                    if job.pending.is_empty() {
                        self.events.push(StoreEvent::Finished {
                            uuid: uuid.clone(),
                            at_ms: now_ms(),
                        });
                    }
                }
                job.results.push(frame.clone());
                job.subscribed
            }
            // A job we do not know (e.g. dispatched before a restart): publish as 0.1 did.
            None => true,
        };
        // Kept whatever happens to the client: a late answer is in the store.
        self.events.push(StoreEvent::Result {
            uuid: uuid.clone(),
            node: node.unwrap_or_else(|| "(unnamed)".into()),
            status: status.as_str().to_owned(),
            received_ms: now_ms(),
            result: body,
        });
        if publish_now {
            publish(&self.s.results, self.log, &uuid, &frame);
        }
    }

    /// An agent went away: every job still waiting for it gets `no_response`.
    fn departed(&mut self, d: Departure) {
        warn!(self.log, "agent down"; "node" => &d.node, "why" => d.why);
        let mut out = Vec::new();
        for (uuid, job) in self.jobs.iter_mut() {
            if job.pending.remove(&d.node) {
                let r = p::encode(&ResultMsg::no_response(
                    uuid,
                    &d.node,
                    &format!("no answer: {}", d.why),
                ));
                job.results.push(r.clone());
                self.events.push(StoreEvent::NoResponse {
                    uuid: uuid.clone(),
                    node: d.node.clone(),
                    at_ms: now_ms(),
                });
                if job.pending.is_empty() {
                    self.events.push(StoreEvent::Finished {
                        uuid: uuid.clone(),
                        at_ms: now_ms(),
                    });
                }
                if job.subscribed {
                    out.push((uuid.clone(), r));
                }
            }
        }
        for (uuid, r) in out {
            publish(&self.s.results, self.log, &uuid, &r);
        }
    }

    fn on_mgmt(&mut self, frames: Vec<Vec<u8>>) {
        // REP must answer every request, or the socket jams (a 0.1 defect).
        let reply = match frames.as_slice() {
            [one] => match p::MgmtRequest::decode(one) {
                Ok(req) => self.mgmt_command(&req),
                Err(e) => MgmtReply::error(e),
            },
            _ => MgmtReply::error(format!("expected one JSON frame, got {}", frames.len())),
        };
        if let Err(e) = self.s.mgmt.send(p::encode(&reply), 0) {
            warn!(self.log, "cannot answer management request"; "error" => %e);
        }
    }

    fn mgmt_command(&mut self, req: &p::MgmtRequest) -> MgmtReply {
        match req.cmd.as_str() {
            p::MANAGER_STATUS => MgmtReply::ok(
                "Service Manager Status",
                Some(json!({
                    "status": "running",
                    "uname": self.host.uname_json(),
                    "frontend_endpoint": self.config.frontend_endpoint,
                    "backend_endpoint": self.config.backend_endpoint,
                    "sink_endpoint": self.config.sink_endpoint,
                    "mgmt_endpoint": self.config.mgmt_endpoint,
                    "result_publisher_port": self.bound.result_publisher_port,
                    "bound": self.bound,
                    "version": env!("CARGO_PKG_VERSION"),
                    "agents_up": self.registry.up_count(),
                    "allow_unsigned": self.gate.allow_unsigned,
                    "jobs_in_memory": self.jobs.len(),
                    "subscriptions": self.subscriptions,
                })),
            ),
            p::MANAGER_SHUTDOWN => {
                if let Err(why) = self.gate.check_mgmt(req) {
                    warn!(self.log, "shutdown refused"; "why" => &why);
                    return MgmtReply::error(format!("shutdown refused: {why}"));
                }
                info!(self.log, "shutdown requested on the management socket");
                self.stop = true;
                MgmtReply::ok("Service Manager is shutting down", None)
            }
            p::MANAGER_AGENTS => {
                let agents: Vec<Value> = self
                    .registry
                    .entries()
                    .map(|e| {
                        let mut v = json!(e);
                        // Announced but its subscriptions not yet in place: not a target yet.
                        if e.state == registry::AgentState::Up && !self.registry.is_up(&e.node) {
                            v["state"] = json!("connecting");
                        }
                        v
                    })
                    .collect();
                MgmtReply::ok("Service Manager Agents", Some(json!(agents)))
            }
            p::MANAGER_JOBS => match self.store.list(req.limit.unwrap_or(50)) {
                Ok(list) => MgmtReply::ok("Service Manager Jobs", Some(json!(list))),
                Err(e) => MgmtReply::error(format!("cannot read the job store: {e:#}")),
            },
            p::MANAGER_JOB => {
                let Some(id) = &req.uuid else {
                    return MgmtReply::error("manager.job needs \"uuid\"");
                };
                match self.store.get(id) {
                    Ok(Some(record)) => MgmtReply::ok("Service Manager Job", Some(json!(record))),
                    Ok(None) => MgmtReply::error(format!("no job {id} in the job store")),
                    Err(e) => MgmtReply::error(format!("cannot read the job store: {e:#}")),
                }
            }
            other => MgmtReply::error(format!(
                "Unknown management command {other:?}; the manager knows {}",
                [
                    p::MANAGER_STATUS,
                    p::MANAGER_SHUTDOWN,
                    p::MANAGER_AGENTS,
                    p::MANAGER_JOBS,
                    p::MANAGER_JOB
                ]
                .join(", ")
            )),
        }
    }

    /// Forget jobs older than job_ttl; their silent nodes are recorded as such.
    fn expire_jobs(&mut self) {
        let window = Duration::from_secs(self.config.request_window * 2);
        self.answered.retain(|_, (at, _)| at.elapsed() < window);
        let ttl = Duration::from_secs(self.config.job_ttl);
        let events = &mut self.events;
        self.jobs.retain(|uuid, j| {
            if j.created.elapsed() < ttl {
                return true;
            }
            for n in &j.pending {
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
