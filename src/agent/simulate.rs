//! `service-mgr agent --simulate N`: many agents in one process, for load tests.
//!
//! Each simulated node is a whole agent as the manager sees it: its own key,
//! its own connection (a DEALER; SUB and PUSH on plaintext), signed presence, hello and heartbeats,
//! requests checked by the same guard (signature, replay, addressing, policy,
//! allowed commands) and results signed and sealed like a real agent's. Only
//! the service manager is fake: an in-memory table of service states, so that
//! a request costs what the protocol costs and nothing else.
//!
//! The nodes are spread over a few threads ("shards"), each polling its own
//! sockets. One management socket serves the whole fleet.

use super::guard::{self, Guard};
use super::uplink::Uplink;
use super::{announcement, check_request, exec::Outcome, executed, refusal, Identity};
use crate::config::AgentConfig;
use crate::host::HostInfo;
use crate::protocol::mgmt::{self, SimulatedStatus};
use crate::protocol::{self as p, AnnounceKind, BackendMessage, MgmtReply, RequestBody, ResultMsg};
use crate::runtime::{self, Control, OnReady};
use crate::security::{self, KeyPair, PublicKey, Role, Signed};
use crate::transport::{self, try_recv};
use anyhow::{bail, Context, Result};
use serde_json::json;
use slog::{debug, info, warn, Logger};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound on simulated nodes in one process (file descriptors, memory).
pub const MAX_SIMULATED: usize = 20_000;

/// Nodes per thread and zmq context (at most two sockets each, of 1023 per context).
const NODES_PER_SHARD: usize = 400;

/// How often a shard wakes at least, to send heartbeats and see a stop.
const TICK: Duration = Duration::from_millis(100);

/// The directory holding the simulated nodes' keys: `simulated/` beside the
/// configured agent key.
pub fn key_dir(config: &AgentConfig) -> PathBuf {
    let key_file = config.key_file();
    key_file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("simulated")
}

/// The name of simulated node `i` (1-based): PREFIX0001, PREFIX0002, ...
pub fn node_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:04}")
}

/// Create (or keep) one agent key per simulated node in `dir`, and write the
/// list of their public keys to `dir/PREFIXfleet.pub`, whose path is returned:
/// `service-mgr mgmt keys import FILE` on the manager's host accepts them all.
pub fn ensure_keys(dir: &Path, prefix: &str, n: usize) -> Result<PathBuf> {
    fleet_keys(dir, prefix, n).map(|(list, _)| list)
}

/// [`ensure_keys`], also returning the key pairs in node order.
fn fleet_keys(dir: &Path, prefix: &str, n: usize) -> Result<(PathBuf, Vec<Arc<KeyPair>>)> {
    check_fleet(prefix, n)?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the key directory {}", dir.display()))?;
    let mut lines = String::new();
    let mut keys = Vec::with_capacity(n);
    for i in 1..=n {
        let node = node_name(prefix, i);
        let file = dir.join(format!("{node}.key"));
        if !file.exists() {
            security::keygen(&file, Role::Agent, &node, false)?;
        }
        let key = KeyPair::load(&file)?;
        lines.push_str(&format!("{}\n", key.public()));
        keys.push(Arc::new(key));
    }
    let list = dir.join(format!("{prefix}fleet.pub"));
    std::fs::write(&list, lines).with_context(|| format!("cannot write {}", list.display()))?;
    Ok((list, keys))
}

fn check_fleet(prefix: &str, n: usize) -> Result<()> {
    if n == 0 || n > MAX_SIMULATED {
        bail!("--simulate takes 1 to {MAX_SIMULATED} nodes, not {n}");
    }
    let sample = node_name(prefix, n);
    if !p::valid_topic(&sample) || security::check_name(&sample).is_err() {
        bail!("--node-prefix {prefix:?} makes node names like {sample:?}, which are not valid node names (letters, digits, '-', '_', '.')");
    }
    Ok(())
}

/// Run `n` simulated agents until `control` says stop or `agent.shutdown` arrives.
pub fn run(
    config: &AgentConfig,
    n: usize,
    prefix: &str,
    control: &Control,
    log: &Logger,
    on_ready: OnReady,
) -> Result<()> {
    check_fleet(prefix, n)?;
    anyhow::ensure!(
        !config.manager_endpoint.contains(','),
        "--simulate talks to one manager; manager_endpoint lists several ({}): name one",
        config.manager_endpoint
    );
    let (list, keys) = fleet_keys(&key_dir(config), prefix, n)?;
    let first_key = keys[0].clone();
    // Each socket is a connection and a mailbox: one DEALER per node on
    // CURVE, a SUB and a PUSH on plaintext.
    let curve = matches!(
        crate::config::pin::manager_key(config.manager_key.as_deref(), &config.manager_endpoint)?
            .wire(Some(&first_key))?,
        transport::Wire::Curve { .. }
    );
    let needed = n * if curve { 2 } else { 4 } + 64;
    let limit = runtime::raise_nofile_limit()?;
    if (limit as usize) < needed {
        bail!(
            "{n} simulated nodes need about {needed} open files; the limit is {limit} \
            (raise it with ulimit -n, or split the fleet over several `agent --simulate` \
            processes, each with its own --node-prefix)"
        );
    }
    let (clients, policy) = guard::load_trust(config, log)?;
    let host = HostInfo::read();

    // libzmq allows 1023 sockets per context and the crate cannot raise
    // that: each shard has its own context (and I/O thread), for at most
    // NODES_PER_SHARD nodes.
    let shards = thread::available_parallelism()
        .map_or(1, |c| c.get())
        .clamp(1, 4)
        .max(n.div_ceil(NODES_PER_SHARD))
        .min(n);
    let ctx = zmq::Context::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::new();
    let mut nodes: Vec<Vec<SimNode>> = (0..shards).map(|_| Vec::new()).collect();
    for (i, key) in keys.into_iter().enumerate() {
        let me = identity(config, &host, key.name());
        let guard = Guard::new(key, clients.clone(), policy.clone(), config);
        nodes[i % shards].push(SimNode::new(me, guard));
    }
    for (s, shard_nodes) in nodes.into_iter().enumerate() {
        let shard = Shard {
            ctx: zmq::Context::new(),
            config: config.clone(),
            host: host.clone(),
            nodes: shard_nodes,
            stop: stop.clone(),
            log: log.new(slog::o!("shard" => s)),
            verified: HashMap::new(),
        };
        let tx = ready_tx.clone();
        handles.push(
            thread::Builder::new()
                .name(format!("sim-shard-{s}"))
                .spawn(move || shard.run(tx))
                .context("cannot start a simulator thread")?,
        );
    }
    drop(ready_tx);
    let outcome = (|| {
        for _ in 0..shards {
            ready_rx
                .recv()
                .context("a simulator thread stopped while starting")??;
        }
        // A load-testing tool: its management socket stays plaintext (keep it on loopback).
        let (mgmt, mgmt_endpoint) = super::bind_mgmt(&ctx, config, None)?;
        let fleet = format!("{prefix}*");
        on_ready(&json!({
            "mgmt_endpoint": mgmt_endpoint, "node": fleet, "nodes": n,
            "first": node_name(prefix, 1), "last": node_name(prefix, n),
            "keys_file": list, "pid": std::process::id(),
        }))?;
        info!(log, "simulated agents started"; "nodes" => n, "first" => node_name(prefix, 1),
            "last" => node_name(prefix, n), "threads" => shards, "manager" => &config.manager_endpoint,
            "mgmt" => &mgmt_endpoint, "keys" => %list.display());
        // Admin of the fleet: the first node's guard checks signed shutdowns,
        // which name the fleet ("PREFIX*") as their node.
        let mut admin = Guard::new(first_key, clients.clone(), policy.clone(), config);
        let mut done = false;
        while !done && !handles.iter().any(|h| h.is_finished()) {
            let mut items = [
                mgmt.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(control.fd(), zmq::POLLIN),
            ];
            transport::poll(&mut items, 500)?;
            let wake = control.take();
            if wake.reopen_logs {
                info!(log, "SIGHUP: log file reopened");
            }
            done |= wake.shutdown;
            while let Ok(Some(frames)) = try_recv(&mgmt) {
                let reply = mgmt::answer(&frames, |req| match req.cmd.as_str() {
                    p::AGENT_STATUS => MgmtReply::with(
                        "Service Manager Agent Status",
                        &SimulatedStatus {
                            status: "running".into(),
                            simulated: true,
                            node: fleet.clone(),
                            nodes: n,
                            manager_endpoint: config.manager_endpoint.clone(),
                            sink_endpoint: config.sink_endpoint.clone(),
                            version: env!("CARGO_PKG_VERSION").into(),
                        },
                    ),
                    p::AGENT_SHUTDOWN => {
                        let allowed = admin.admit_mgmt(req, &fleet);
                        done |= allowed.is_ok();
                        MgmtReply::shutdown(&allowed, super::AGENT_SHUTTING_DOWN)
                    }
                    other => MgmtReply::unknown(other, "agent", super::AGENT_COMMANDS),
                });
                let _ = mgmt.send(reply, 0);
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(log, "a simulator thread failed"; "error" => format!("{e:#}")),
            Err(_) => warn!(log, "a simulator thread panicked"),
        }
    }
    info!(log, "simulated agents stopped");
    outcome
}

fn identity(config: &AgentConfig, host: &HostInfo, node: &str) -> Identity {
    let mut topics: BTreeSet<String> = config.topics.iter().cloned().collect();
    topics.insert(p::TOPIC_ANY.to_owned());
    topics.insert(host.system.clone());
    topics.insert(node.to_owned());
    Identity {
        node: node.to_owned(),
        system: host.system.clone(),
        version: host.version.clone(),
        topics: topics.into_iter().collect(),
    }
}

/// One simulated agent.
struct SimNode {
    me: Identity,
    guard: Guard,
    instance: String,
    private_topic: String,
    presence: String,
    welcomed: bool,
    started_ms: u64,
    next_beat: Instant,
    next_presence: Instant,
    /// Services this node stopped; every other service is running.
    stopped: BTreeSet<String>,
    uplink: Option<Uplink>,
}

impl SimNode {
    fn new(me: Identity, guard: Guard) -> SimNode {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        SimNode {
            private_topic: p::private_topic(&me.node, &instance),
            presence: guard.presence(&instance),
            me,
            guard,
            instance,
            welcomed: false,
            started_ms: crate::clock::now_ms(),
            next_beat: Instant::now(),
            next_presence: Instant::now(),
            stopped: BTreeSet::new(),
            uplink: None,
        }
    }

    fn connect(&mut self, ctx: &zmq::Context, config: &AgentConfig) -> Result<()> {
        let manager = crate::config::pin::manager_key(
            config.manager_key.as_deref(),
            &config.manager_endpoint,
        )?;
        let wire = manager.wire(Some(&self.guard.key))?;
        let uplink = Uplink::connect(
            ctx,
            &config.manager_endpoint,
            &config.sink_endpoint,
            &wire,
            2000,
        )?;
        // On the DEALER we say this when the manager says hello (introduce).
        if !uplink.is_link() {
            for t in &self.me.topics {
                uplink.subscribe(t)?;
            }
            uplink.subscribe(&self.private_topic)?;
            uplink.subscribe(&self.presence)?;
        }
        uplink.start()?;
        self.uplink = Some(uplink);
        Ok(())
    }

    fn send(&self, frame: Vec<u8>) -> bool {
        self.uplink.as_ref().is_some_and(|u| u.send(frame).is_ok())
    }

    /// The manager said hello on a new connection: as the agent's introduce,
    /// without acks (simulated nodes keep no outbox).
    fn introduce(&mut self, config: &AgentConfig, host: &HostInfo) {
        let Some(uplink) = &self.uplink else { return };
        self.presence = self.guard.presence(&self.instance);
        self.welcomed = false;
        uplink.declare(&self.presence, &self.me.topics);
        self.announce(AnnounceKind::Hello, config, host);
    }

    fn announce(&self, kind: AnnounceKind, config: &AgentConfig, host: &HostInfo) {
        let interval_ms = config.heartbeat_interval.max(1) * 1000;
        let mut a = announcement(
            kind,
            &self.me,
            host,
            &self.instance,
            self.started_ms,
            interval_ms,
            0,
        );
        self.guard.sign_announce(&mut a);
        // A full queue (manager away) only costs a heartbeat.
        self.send(p::encode(&a));
    }

    /// A new presence token replaces the old one (see the agent's refresh_presence).
    fn refresh_presence(&mut self) {
        let fresh = self.guard.presence(&self.instance);
        if let Some(uplink) = &self.uplink {
            if uplink.subscribe(&fresh).is_ok() {
                let _ = uplink.unsubscribe(&self.presence);
                self.presence = fresh;
                self.welcomed = false;
            }
        }
    }

    /// The fake service manager: instant, with the exit codes and words of
    /// `service(8)`, so that the result's state reads as a real one would.
    fn fake_service(&mut self, service: &str, cmd: &str) -> Outcome {
        let running = !self.stopped.contains(service);
        let (returncode, stdout) = match cmd {
            "status" if running => (0, format!("{service} is running as pid 4242.\n")),
            "status" => (3, format!("{service} is not running.\n")),
            "start" | "restart" => {
                self.stopped.remove(service);
                (0, format!("Starting {service}.\n"))
            }
            "stop" => {
                self.stopped.insert(service.to_owned());
                (0, format!("Stopping {service}.\n"))
            }
            other => (0, format!("{other} {service}: done.\n")),
        };
        Outcome {
            returncode,
            stdout,
            stderr: String::new(),
            timed_out: false,
            interrupted: false,
            truncated: false,
            duration: Duration::ZERO,
        }
    }
}

/// A verified request signature, shared by the nodes of a shard: one process
/// stands in for many hosts, which would each check the same envelope in
/// parallel; checking it once per shard keeps the simulator from measuring
/// its own crypto instead of the manager.
type Verified = HashMap<String, (Signed, Result<(PublicKey, RequestBody), guard::Refusal>)>;

/// Envelopes a shard remembers: requests of many clients interleave.
const VERIFIED_MEMO: usize = 256;

struct Shard {
    ctx: zmq::Context,
    config: AgentConfig,
    host: HostInfo,
    nodes: Vec<SimNode>,
    stop: Arc<AtomicBool>,
    log: Logger,
    verified: Verified,
}

impl Shard {
    fn run(mut self, ready: mpsc::Sender<Result<()>>) -> Result<()> {
        let connected = self
            .nodes
            .iter_mut()
            .try_for_each(|n| n.connect(&self.ctx, &self.config));
        let failed = connected.as_ref().err().map(|e| format!("{e:#}"));
        let _ = ready.send(connected);
        if let Some(e) = failed {
            bail!(e);
        }
        let interval = Duration::from_secs(self.config.heartbeat_interval.max(1));
        // Spread the fleet's heartbeats over the interval.
        let count = self.nodes.len().max(1) as u32;
        let start = Instant::now();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            node.announce(AnnounceKind::Hello, &self.config, &self.host);
            node.next_beat = start + interval * (i as u32 + 1) / count;
            node.next_presence = node.next_beat;
        }
        let mut readable = Vec::with_capacity(self.nodes.len());
        while !self.stop.load(Ordering::SeqCst) {
            {
                let mut items: Vec<zmq::PollItem> = self
                    .nodes
                    .iter()
                    .filter_map(|n| {
                        n.uplink
                            .as_ref()
                            .map(|u| u.inbound().as_poll_item(zmq::POLLIN))
                    })
                    .collect();
                transport::poll(&mut items, TICK.as_millis() as i64)?;
                readable.clear();
                readable.extend(
                    items
                        .iter()
                        .enumerate()
                        .filter(|(_, i)| i.is_readable())
                        .map(|(k, _)| k),
                );
            }
            for &k in &readable {
                while let Some(Ok(Some(frames))) =
                    self.nodes[k].uplink.as_ref().map(|u| try_recv(u.inbound()))
                {
                    self.on_request(k, frames);
                }
            }
            let now = Instant::now();
            for node in &mut self.nodes {
                if now >= node.next_beat {
                    node.announce(AnnounceKind::Heartbeat, &self.config, &self.host);
                    node.next_beat = now + interval;
                }
                if now >= node.next_presence {
                    let period = if node.welcomed {
                        super::PRESENCE_REFRESH
                    } else {
                        interval
                    };
                    node.refresh_presence();
                    node.next_presence = now + period;
                }
            }
        }
        for node in &self.nodes {
            node.announce(AnnounceKind::Bye, &self.config, &self.host);
        }
        // Let the I/O threads flush the goodbyes before the sockets close.
        thread::sleep(Duration::from_millis(200));
        Ok(())
    }

    fn on_request(&mut self, k: usize, frames: Vec<Vec<u8>>) {
        let node = &mut self.nodes[k];
        if let [hello] = frames.as_slice() {
            if node.uplink.as_ref().is_some_and(Uplink::is_link) && p::ManagerHello::is(hello) {
                node.introduce(&self.config, &self.host);
            }
            return;
        }
        let [topic, body] = frames.as_slice() else {
            return;
        };
        let topic = p::parse_backend_topic(topic).unwrap_or_default();
        if topic != node.private_topic && !node.me.topics.iter().any(|t| t == topic) {
            return;
        }
        let req = match BackendMessage::decode(body) {
            Ok(BackendMessage::Dispatch(r)) => r,
            Ok(BackendMessage::Welcome(_)) => {
                node.welcomed |= topic == node.private_topic;
                return;
            }
            // Simulated nodes keep no outbox and do not subscribe to acks.
            Ok(BackendMessage::Ack(_)) => return,
            Err((uuid, e)) => {
                debug!(self.log, "bad request"; "node" => &node.me.node, "reason" => %e);
                if let Some(uuid) = uuid {
                    let r = refusal(&node.me.node, &uuid, None, e.to_string());
                    node.send(guard::result_frame(&node.guard.key, &r, None, None, false));
                }
                return;
            }
        };
        let signed = req.auth.is_some();
        let admitted = match &req.auth {
            None => node.guard.admit(&req, &node.me),
            Some(auth) => {
                let hit = matches!(self.verified.get(&auth.sig), Some((s, _)) if s == auth);
                if !hit {
                    if self.verified.len() >= VERIFIED_MEMO {
                        self.verified.clear();
                    }
                    let v = node.guard.verify_request(auth);
                    self.verified.insert(auth.sig.clone(), (auth.clone(), v));
                }
                match self.verified.get(&auth.sig) {
                    Some((_, Ok((pk, body)))) => {
                        node.guard
                            .admit_verified(&req, &node.me, pk.clone(), body.clone())
                    }
                    Some((_, Err(why))) => Err(Box::new(guard::Refused {
                        client: None,
                        request_id: None,
                        why: why.clone(),
                    })),
                    None => unreachable!("inserted above"),
                }
            }
        };
        let result: ResultMsg;
        let (client, request_id) = match admitted {
            Ok(a) => match check_request(&self.config, 0, &req) {
                Ok(()) => {
                    let outcome = node.fake_service(&req.service, &req.cmd);
                    result = executed(&node.me, &req, Ok(outcome));
                    (a.client, a.request_id)
                }
                Err(why) => {
                    result = refusal(&node.me.node, &req.uuid, Some(&req.cmd), why.to_string());
                    (a.client, a.request_id)
                }
            },
            Err(r) => {
                debug!(self.log, "request refused"; "node" => &node.me.node, "reason" => %r.why);
                result = refusal(&node.me.node, &req.uuid, Some(&req.cmd), r.why.to_string());
                (r.client, r.request_id)
            }
        };
        let frame = guard::result_frame(
            &node.guard.key,
            &result,
            client.as_ref(),
            request_id,
            signed,
        );
        if !node.send(frame) {
            warn!(self.log, "result could not be queued for the manager and is lost"; "node" => &node.me.node, "uuid" => &req.uuid);
        }
    }
}
