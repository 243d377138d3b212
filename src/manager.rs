//! The manager daemon (`service-mgrd`): takes requests from clients, publishes
//! them to agents, collects results on the sink and republishes them to the
//! client that asked.
//!
//! One thread owns every socket and polls them together with the control fd.
//! Two fixes over 0.1 live here:
//! - the backend XPUB runs in manual mode and stores each subscription with a
//!   terminator, so topics match exactly instead of by prefix;
//! - the result publisher is an XPUB too: results of a job are held until the
//!   client's subscription to the job id arrives, so none is lost to the race
//!   between dispatch and subscribe.

use crate::config::ManagerConfig;
use crate::protocol::{self as p, Accepted, Dispatch, ErrorReply, MgmtReply, ServiceRequest};
use crate::runtime::Control;
use crate::transport::{self, try_recv};
use crate::host::HostInfo;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;
use slog::{debug, error, info, warn, Logger};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The endpoints the manager really bound (ports resolved), for the ready file
/// and `manager.status`.
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
    /// Result frames received so far, in arrival order, kept until the job expires
    /// so that a late subscriber gets them all.
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
/// `ready_file`, when given, receives the bound endpoints as JSON once every
/// socket is bound (tests and init systems wait for it).
pub fn run(config: &ManagerConfig, control: &Control, log: &Logger, ready_file: Option<&Path>) -> Result<()> {
    let ctx = zmq::Context::new();
    let (sockets, bound) = bind_all(&ctx, config)?;
    if let Some(path) = ready_file {
        write_ready_file(path, &bound)?;
    }
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
    let sink = transport::socket(ctx, zmq::PULL)?;
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

    let frontend_endpoint = transport::bind(&frontend, &config.frontend_endpoint, "frontend_endpoint", PROG)?;
    let backend_endpoint = transport::bind(&backend, &config.backend_endpoint, "backend_endpoint", PROG)?;
    let sink_endpoint = transport::bind(&sink, &config.sink_endpoint, "sink_endpoint", PROG)?;
    let mgmt_endpoint = transport::bind(&mgmt, &config.mgmt_endpoint, "mgmt_endpoint", PROG)?;
    let wanted = match &config.result_endpoint {
        Some(e) => e.clone(),
        None => default_result_endpoint(&config.frontend_endpoint)?,
    };
    let result_endpoint = transport::bind(&results, &wanted, "result_endpoint", PROG)?;
    let result_publisher_port = transport::endpoint_port(&result_endpoint)
        .with_context(|| format!("result_endpoint {result_endpoint} has no TCP port; clients find results by port"))?;
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
        format!("frontend_endpoint {frontend} is not tcp://HOST:PORT; set result_endpoint explicitly")
    })?;
    Ok(format!("tcp://{host}:*"))
}

fn write_ready_file(path: &Path, bound: &Bound) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut doc = serde_json::to_value(bound)?;
    doc["pid"] = json!(std::process::id());
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("cannot write ready file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write ready file {}", path.display()))
}

struct Manager<'a> {
    config: &'a ManagerConfig,
    log: &'a Logger,
    s: Sockets,
    bound: Bound,
    jobs: HashMap<String, Job>,
    host: HostInfo,
    /// Agent subscriptions by topic (how many pipes), as reported by the backend.
    subscriptions: HashMap<String, usize>,
    stop: bool,
}

impl Manager<'_> {
    fn serve(&mut self, control: &Control) -> Result<()> {
        let mut last_sweep = Instant::now();
        while !self.stop {
            let mut items = [
                self.s.frontend.as_poll_item(zmq::POLLIN),
                self.s.backend.as_poll_item(zmq::POLLIN),
                self.s.sink.as_poll_item(zmq::POLLIN),
                self.s.mgmt.as_poll_item(zmq::POLLIN),
                self.s.results.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(control.fd(), zmq::POLLIN),
            ];
            transport::poll(&mut items, 1000)?;
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
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                self.expire_jobs();
                last_sweep = Instant::now();
            }
        }
        // Results already on their way in are still delivered.
        self.drain(Self::on_result_subscription, |s| &s.results);
        self.drain(Self::on_sink, |s| &s.sink);
        Ok(())
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
            Ok(a) => p::encode(&a),
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

    /// Validate a request, dispatch it and say where its results will appear.
    fn accept(&mut self, body: &[u8]) -> Result<Accepted, ErrorReply> {
        let req = ServiceRequest::decode(body).map_err(ErrorReply::new)?;
        if !p::valid_topic(&req.topic) {
            return Err(ErrorReply::new(format!(
                "topic {:?} is not a valid topic (printable, no blanks or commas, 1 to 255 bytes)",
                req.topic
            )));
        }
        p::check_service_name(&req.service).map_err(ErrorReply::new)?;
        p::check_command_word(&req.cmd).map_err(ErrorReply::new)?;
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let dispatch = Dispatch {
            cmd: req.cmd.clone(),
            service: req.service.clone(),
            topic: req.topic.clone(),
            uuid: uuid.clone(),
            v: Some(p::PROTOCOL_VERSION),
        };
        // Register the job before publishing, so that no result can beat it.
        self.jobs.insert(
            uuid.clone(),
            Job {
                created: Instant::now(),
                results: Vec::new(),
                subscribed: false,
            },
        );
        let topic = p::backend_topic(&req.topic);
        if let Err(e) = self
            .s
            .backend
            .send_multipart([topic.as_slice(), &p::encode(&dispatch)], zmq::DONTWAIT)
        {
            self.jobs.remove(&uuid);
            return Err(ErrorReply::new(format!("cannot dispatch the request: {e}")));
        }
        info!(self.log, "request dispatched"; "uuid" => &uuid, "topic" => &req.topic,
            "cmd" => &req.cmd, "service" => &req.service);
        Ok(Accepted {
            uuid,
            port: self.bound.result_publisher_port,
            v: Some(p::PROTOCOL_VERSION),
            expected: None,
        })
    }

    /// Manual XPUB: subscribe the agent's pipe to the topic plus terminator.
    fn on_backend_subscription(&mut self, frames: Vec<Vec<u8>>) {
        let Some(frame) = frames.first() else { return };
        let Some((&kind, topic)) = frame.split_first() else { return };
        let mut stored = topic.to_vec();
        stored.push(p::TOPIC_TERMINATOR);
        let shown = String::from_utf8_lossy(topic);
        let rc = match kind {
            1 => {
                debug!(self.log, "agent subscribed"; "topic" => %shown);
                *self.subscriptions.entry(shown.to_string()).or_default() += 1;
                self.s.backend.set_subscribe(&stored)
            }
            0 => {
                debug!(self.log, "agent unsubscribed"; "topic" => %shown);
                if let Some(n) = self.subscriptions.get_mut(shown.as_ref()) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.subscriptions.remove(shown.as_ref());
                    }
                }
                self.s.backend.set_unsubscribe(&stored)
            }
            _ => Ok(()),
        };
        if let Err(e) = rc {
            warn!(self.log, "cannot apply subscription"; "topic" => %shown, "error" => %e);
        }
    }

    /// A client subscribed to (or left) a job id: deliver what is held for it.
    fn on_result_subscription(&mut self, frames: Vec<Vec<u8>>) {
        let Some(frame) = frames.first() else { return };
        let Some((&kind, topic)) = frame.split_first() else { return };
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
            if let Err(e) = self.s.results.send_multipart([uuid.as_bytes(), frame.as_slice()], zmq::DONTWAIT) {
                warn!(self.log, "cannot publish result"; "uuid" => &uuid, "error" => %e);
            }
        }
    }

    fn on_sink(&mut self, frames: Vec<Vec<u8>>) {
        let [frame] = frames.as_slice() else {
            warn!(self.log, "sink message dropped: expected one frame"; "frames" => frames.len());
            return;
        };
        let obj = match p::decode_object(frame, p::RESULT_LIMIT) {
            Ok(o) => o,
            Err(e) => {
                warn!(self.log, "sink message dropped"; "reason" => %e);
                return;
            }
        };
        let uuid = match p::opt_str(&obj, "uuid") {
            Ok(Some(u)) => u.to_owned(),
            other => {
                // Nothing can route it; say so loudly rather than lose it silently.
                let node = obj.get("node").or_else(|| obj.get("result").and_then(|r| r.get("node")));
                warn!(self.log, "result without a valid uuid dropped";
                    "node" => %node.unwrap_or(&serde_json::Value::Null),
                    "problem" => %other.err().map(|e| e.to_string()).unwrap_or_else(|| "no uuid".into()));
                return;
            }
        };
        debug!(self.log, "result received"; "uuid" => &uuid);
        let publish_now = match self.jobs.get_mut(&uuid) {
            Some(job) => {
                job.results.push(frame.clone());
                job.subscribed
            }
            // A job we do not know (e.g. dispatched before a restart): publish as 0.1 did.
            None => true,
        };
        if publish_now {
            if let Err(e) = self.s.results.send_multipart([uuid.as_bytes(), frame.as_slice()], zmq::DONTWAIT) {
                warn!(self.log, "cannot publish result"; "uuid" => &uuid, "error" => %e);
            }
        }
    }

    fn on_mgmt(&mut self, frames: Vec<Vec<u8>>) {
        // REP must answer every request, or the socket jams (a 0.1 defect).
        let reply = match frames.as_slice() {
            [one] => match p::MgmtRequest::decode(one) {
                Ok(req) => self.mgmt_command(&req.cmd),
                Err(e) => MgmtReply::error(e),
            },
            _ => MgmtReply::error(format!("expected one JSON frame, got {}", frames.len())),
        };
        if let Err(e) = self.s.mgmt.send(p::encode(&reply), 0) {
            warn!(self.log, "cannot answer management request"; "error" => %e);
        }
    }

    fn mgmt_command(&mut self, cmd: &str) -> MgmtReply {
        match cmd {
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
                    "jobs_in_memory": self.jobs.len(),
                    "subscriptions": self.subscriptions,
                })),
            ),
            p::MANAGER_SHUTDOWN => {
                info!(self.log, "shutdown requested on the management socket");
                self.stop = true;
                MgmtReply::ok("Service Manager is shutting down", None)
            }
            other => MgmtReply::error(format!(
                "Unknown management command {other:?}; the manager knows {} and {}",
                p::MANAGER_STATUS,
                p::MANAGER_SHUTDOWN
            )),
        }
    }

    fn expire_jobs(&mut self) {
        let ttl = Duration::from_secs(self.config.job_ttl);
        self.jobs.retain(|_, j| j.created.elapsed() < ttl);
    }
}
