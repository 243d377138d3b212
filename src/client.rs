//! The client (`service-mgr-client`): sends a request to the manager's
//! frontend, subscribes to its job id on the result publisher and collects
//! what the agents answer, until every expected node has answered or the wait
//! runs out. Then it builds the report: every targeted node with a status.

use crate::args::VersionFlag;
use crate::exit::{Exit, UsageError};
use crate::logging;
use crate::output::{self, Format};
use crate::protocol::{
    self as p, Accepted, FollowRecord, FollowRequest, FrontendReply, RequestBody, ResultEnvelope,
    ResultFrame, ResultMsg, ServiceRequest, SignedResult,
};
use crate::report::{NodeResult, Report, Status};
use crate::security::{self, KeyPair, PublicKey, Purpose};
use crate::transport;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{Map, Value};
use slog::{debug, Logger};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

// Bench and the fuzz targets still call these by their old paths.
pub use crate::output::to_json_pretty;
pub use crate::report::{node_of, status_of};

/// Upper bound on the wait when the manager says who will answer: the client
/// returns as soon as they all did, so this only matters for slow commands.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// The wait against a 0.1 manager, which cannot say who will answer (0.1's default).
pub const DEFAULT_WAIT_01: Duration = Duration::from_millis(100);

/// How long a waiting client hears nothing before it asks the manager about
/// its job again: a restarted manager publishes on a new result port (unless
/// `result_endpoint` is pinned) and no longer holds the job in memory, so the
/// client follows it anew (a new port to subscribe to, or the job's record
/// with the answers that came in since).
const RECHECK: Duration = Duration::from_secs(2);

/// The client's command line (`service-mgr-client`, `service-mgr client`).
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Seconds to wait for results at most [default: 60 when the manager says which nodes
    /// will answer (the client returns as soon as they all did); 0.1 against a 0.1 manager].
    #[arg(short = 'w', long = "wait", value_name = "WAIT")]
    pub wait: Option<f64>,
    /// Tries to reach the manager [default: 3].
    #[arg(short = 'r', long = "retries", value_name = "RETRIES")]
    pub retries: Option<u32>,
    /// Milliseconds to wait for the manager's answer per try [default: 1000].
    #[arg(short = 't', long = "timeout", value_name = "TIMEOUT")]
    pub timeout: Option<u64>,
    /// Debug output on stderr.
    #[arg(short = 'D', long = "debug")]
    pub debug: bool,
    /// The manager's frontend endpoint, else `endpoint` in client.conf
    /// [default: tcp://localhost:5500] ($SERVICE_MGR_PORT moves the default port).
    /// Several managers comma-separated: the first that answers is asked, and
    /// a job whose manager goes away continues through another.
    #[arg(short = 'e', long = "endpoint", value_name = "ENDPOINT")]
    pub endpoint: Option<String>,
    /// Who runs it: `any`, an OS name (`Linux`, `FreeBSD`), a node name or a custom topic
    /// [default with -N or -G: any].
    #[arg(short = 'T', long = "topic", value_name = "TOPIC", allow_hyphen_values = true,
          required_unless_present_any = ["nodes", "glob", "job"])]
    pub topic: Option<String>,
    /// Only these nodes (comma-separated), combined with -T.
    #[arg(
        short = 'N',
        long = "nodes",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub nodes: Option<Vec<String>>,
    /// Only registered nodes whose name matches this glob (e.g. 'web*'), combined with -T and -N.
    #[arg(short = 'G', long = "glob", value_name = "PATTERN")]
    pub glob: Option<String>,
    /// The service command: start, stop, restart, reload or status.
    #[arg(
        short = 'c',
        long = "cmd",
        value_name = "CMD",
        allow_hyphen_values = true,
        required_unless_present = "job",
        value_parser = crate::hints::Hints(&crate::hints::SERVICE_COMMANDS),
        hide_possible_values = true
    )]
    pub cmd: Option<String>,
    /// The service's name.
    #[arg(
        short = 's',
        long = "service",
        value_name = "SERVICE",
        allow_hyphen_values = true,
        required_unless_present = "job"
    )]
    pub service: Option<String>,
    /// Run on at most N nodes at a time (N or N%): a rolling restart.
    #[arg(long, value_name = "N|N%")]
    pub batch: Option<String>,
    /// Seconds to pause between batches.
    #[arg(long, value_name = "SECS", default_value_t = 0.0, requires = "batch")]
    pub batch_wait: f64,
    /// Stop the rollout after the first batch in which a node did not succeed.
    #[arg(long, requires = "batch")]
    pub fail_fast: bool,
    /// Show an earlier job by its id (its results so far, then any still to come).
    #[arg(long, value_name = "ID", conflicts_with_all = ["topic", "nodes", "glob", "cmd", "service", "batch"])]
    pub job: Option<String>,
    /// The client key that signs requests [default: $SERVICE_MGR_KEY, else
    /// ~/.config/service-mgr/client.key if it exists; without a key, or with
    /// SERVICE_MGR_KEY=none, requests go unsigned].
    #[arg(short = 'k', long = "key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The manager's public key, pinned (a manager.key.pub file or its line; `plaintext` for a
    /// 0.1 or allow_unsigned manager) [default: $SERVICE_MGR_MANAGER_KEY, else
    /// ~/.config/service-mgr/manager.key.pub, else that of a manager on this host].
    #[arg(long = "manager-key", value_name = "FILE|LINE")]
    pub manager_key: Option<String>,
    /// Output format [default: table on a terminal; when piped, legacy as
    /// service-mgr-client (0.1's output) and json as service-mgr client].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Send a command beyond start, stop, restart, reload and status (one the
    /// agents declare in their custom_commands, e.g. condrestart).
    #[arg(long)]
    pub custom: bool,
    /// The client config file to read instead of /etc/service-mgr/client.conf and
    /// ~/.config/service-mgr/client.conf [default: $SERVICE_MGR_CLIENT_CONF; `none`
    /// reads none]. Options on the command line win over it.
    #[arg(long = "conf", value_name = "FILE")]
    pub conf: Option<PathBuf>,
    #[command(flatten)]
    pub version: VersionFlag,
}

impl ClientArgs {
    /// What the client can tell is wrong without asking anyone: exit 2 at
    /// once instead of a refusal (or a wait) from the manager or the agents.
    pub fn check(&self, endpoint: &str) -> Result<(), UsageError> {
        let usage = |msg: String| Err(UsageError(msg));
        crate::config::base_port().map_err(UsageError)?;
        if let Some(w) = self.wait.filter(|w| !(w.is_finite() && *w >= 0.0)) {
            return usage(format!("-w must be a number of seconds, got {w}"));
        }
        if !(self.batch_wait.is_finite() && self.batch_wait >= 0.0) {
            return usage("--batch-wait must be a number of seconds".into());
        }
        for e in endpoint.split(',').map(str::trim) {
            let endpoint_ok = match e.split_once("://") {
                Some(("tcp", rest)) => rest.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                }),
                Some(("ipc", rest)) => !rest.is_empty(),
                _ => false,
            };
            if !endpoint_ok {
                return usage(format!(
                    "-e {e:?} is not a manager endpoint; say tcp://HOST:PORT, e.g. tcp://localhost:5500 \
                     (several managers comma-separated)"
                ));
            }
        }
        if let Some(t) = &self.topic {
            if t.contains(['*', '?', '[']) {
                return usage(format!(
                    "-T {t:?}: topics match exactly; to pick nodes by name pattern say -G {t:?} (with -T any or another topic)"
                ));
            }
            if !p::valid_topic(t) {
                return usage(format!(
                    "-T {t:?} is not a topic: say any, an OS name (Linux, FreeBSD), a node name or a custom topic"
                ));
            }
        }
        if let Some(n) = self.nodes.iter().flatten().find(|n| !p::valid_topic(n)) {
            return usage(format!("-N: {n:?} is not a node name"));
        }
        if let Some(s) = &self.service {
            p::check_service_name(s).or_else(|why| usage(format!("-s: {why}")))?;
        }
        if let Some(c) = &self.cmd {
            if c.chars().any(|ch| ch.is_ascii_uppercase())
                && p::STANDARD_COMMANDS.contains(&c.to_ascii_lowercase().as_str())
            {
                return usage(format!(
                    "-c {c:?}: commands are lower-case (say -c {})",
                    c.to_ascii_lowercase()
                ));
            }
            p::check_command_word(c).or_else(|why| usage(format!("-c: {why}")))?;
            if !self.custom && !p::STANDARD_COMMANDS.contains(&c.as_str()) {
                let near = p::STANDARD_COMMANDS
                    .iter()
                    .find(|k| strsim::damerau_levenshtein(k, c) <= 2)
                    .map(|k| format!(" (did you mean {k}?)"))
                    .unwrap_or_default();
                return usage(format!(
                    "-c {c:?}: unknown command{near}; the commands are {}; a command the agents declare in custom_commands needs --custom",
                    p::STANDARD_COMMANDS.join(", ")
                ));
            }
        }
        if let Some(spec) = &self.batch {
            batch_size(spec, 1).map_err(|e| UsageError(e.to_string()))?;
        }
        Ok(())
    }
}

/// What to ask, of whom.
#[derive(Debug, Clone)]
pub struct Request {
    /// The manager's frontend; several managers comma-separated (see [`Request::managers`]).
    pub endpoint: String,
    /// Which of them answered last (an index into the list): asked first next time.
    pub preferred: std::cell::Cell<usize>,
    pub request: ServiceRequest,
    /// Upper bound on the wait for results; `None` for the defaults above.
    pub wait: Option<Duration>,
    pub retries: u32,
    pub timeout: Duration,
    /// Nodes to wait for when the manager does not say (a 0.1 manager).
    pub expect: Option<Vec<String>>,
    /// The client's key: requests are signed with it and results sealed to it.
    /// Without one the request goes unsigned (served only by 0.1-compatible managers).
    pub key: Option<std::sync::Arc<KeyPair>>,
    /// How we reach the manager: CURVE to its pinned key, or plaintext.
    pub wire: transport::Wire,
}

impl Request {
    /// The managers `endpoint` names, the one that answered last first.
    pub fn managers(&self) -> Vec<String> {
        let mut all: Vec<String> = self.listed().map(str::to_owned).collect();
        let first = self.preferred.get().min(all.len().saturating_sub(1));
        all.rotate_left(first);
        all
    }

    /// `endpoint` answered: ask it first from now on.
    fn prefer(&self, endpoint: &str) {
        if let Some(i) = self.listed().position(|e| e == endpoint) {
            self.preferred.set(i);
        }
    }

    /// The managers `endpoint` names, in its order.
    fn listed(&self) -> impl Iterator<Item = &str> {
        self.endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
    }

    /// Ask the managers in turn, the one that answered last first: `-r`
    /// rounds, each manager one try of `-t` per round (one manager: its `-r`
    /// tries, watched as [`transport::request`] watches them). The first
    /// answer wins; returns it with the manager that gave it.
    fn ask<T>(&self, mut one: impl FnMut(&str, u32) -> Result<T>) -> Result<(T, String)> {
        let managers = self.managers();
        if let [only] = managers.as_slice() {
            return Ok((one(only, self.retries)?, only.clone()));
        }
        let mut last = None;
        for _ in 0..self.retries.max(1) {
            for m in &managers {
                match one(m, 1) {
                    Ok(t) => {
                        self.prefer(m);
                        return Ok((t, m.clone()));
                    }
                    Err(e) => match e.downcast::<transport::NoAnswer>() {
                        Ok(no) => last = Some(no),
                        Err(other) => return Err(other),
                    },
                }
            }
        }
        let last = last.map_or_else(String::new, |n| n.to_string());
        Err(transport::NoAnswer {
            // One unwatched try each: any of them may have got it.
            reached: true,
            why: format!(
                "none of the {} managers answered (the last: {last})",
                managers.len()
            ),
        }
        .into())
    }
}

/// Sign a request with the client's key: a fresh id and time, our key line.
/// Returns the request's id, which every signed result must name.
pub fn sign(request: &mut ServiceRequest, key: &KeyPair) -> String {
    sign_until(request, key, None)
}

/// [`sign`], with the client's deadline for the manager's accept, `wait`
/// after the signed timestamp: after it, neither the manager nor an agent runs
/// the request.
pub fn sign_until(request: &mut ServiceRequest, key: &KeyPair, wait: Option<Duration>) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let ts = crate::clock::now_ms();
    let mut body = RequestBody::for_request(request, id.clone(), ts, key.public().to_string());
    body.accept_by = wait.map(|w| ts + w.as_millis() as u64);
    request.auth = Some(security::sign(key, Purpose::Request, &body));
    id
}

/// How long the client waits for the manager's accept in all: `-r` tries of
/// `-t` ms, of each manager it knows.
fn accept_wait(req: &Request) -> Duration {
    req.timeout * req.retries.max(1) * req.managers().len().max(1) as u32
}

/// What the client says when the manager never accepted a signed request,
/// which carried `accept_by`: not run, or (when the request may have reached
/// the manager, whose answer was then lost) may have been, with how to check.
fn gave_up(err: anyhow::Error, req: &Request, request_id: &str) -> anyhow::Error {
    let Some(no_answer) = err.downcast_ref::<transport::NoAnswer>() else {
        return err;
    };
    let waited = accept_wait(req).as_millis();
    if !no_answer.reached {
        return anyhow::anyhow!(
            "the manager did not accept the request within {waited} ms; it was not run (its \
             deadline has passed, so no manager or agent will run it): {no_answer}"
        );
    }
    // Over plaintext the manager may be a 0.1 one, which knows no deadline.
    let from_now = if req.wire.is_curve() {
        "so no manager or agent will run it"
    } else {
        "so no service-mgr 0.2 manager or agent will run it (0.1 ones ignore the deadline)"
    };
    anyhow::anyhow!(
        "the manager did not accept the request within {waited} ms. It may have been \
         dispatched: the request may have reached the manager, whose answer was then lost \
         (request id {request_id}; the job id is unknown to the client: on the manager's host \
         look for request={request_id} in the manager's log (the line \"request dispatched\" \
         gives its uuid for `service-mgr client --job UUID`), or see `service-mgr mgmt jobs`). \
         From now on its deadline has passed, {from_now}: {no_answer}"
    )
}

/// Check a result against the key the manager reported for its node, and
/// open its sealed content. Unsigned results (0.1 agents, the manager's own
/// `no_response`) pass unchanged.
pub(crate) fn verify_result(
    frame: ResultFrame,
    accepted: &Accepted,
    key: Option<&KeyPair>,
    request_id: Option<&str>,
) -> Result<Map<String, Value>, String> {
    let env = match frame {
        ResultFrame::Plain(obj) => return check_unsigned(obj, accepted, key),
        ResultFrame::BadSigned { why, .. } => return Err(why),
        ResultFrame::Signed(env) => env,
    };
    let line = accepted
        .agent_keys
        .as_ref()
        .and_then(|k| k.get(&env.node))
        .ok_or_else(|| {
            format!(
                "no known key for node {:?}: cannot verify its result",
                env.node
            )
        })?;
    // The signed text is decoded once, for the seal and for the signature path.
    let body = SignedResult::from_signed(&env.auth.body);
    if let Ok(body) = &body {
        if let Some(m) = opened_from(&env, body, line, &accepted.uuid, key) {
            return Ok(m);
        }
    }
    let agent: PublicKey = line
        .parse()
        .map_err(|e| format!("bad agent key from the manager: {e}"))?;
    security::verify_signature(&env.auth, Purpose::Result, |id| {
        (id == agent.key_id()).then(|| agent.clone())
    })
    .map_err(|e| format!("result of {:?} does not verify: {e}", env.node))?;
    let body = body.map_err(|e| format!("bad signed result: {e}"))?;
    if body.uuid != accepted.uuid || body.node != env.node {
        return Err(format!(
            "result of {:?} was signed for another job or node",
            env.node
        ));
    }
    // It must answer our request: a result naming another request id is a
    // replay. Only a refusal of a request whose signature failed names none.
    match (request_id, body.request_id.as_deref()) {
        (Some(ours), Some(theirs)) if ours != theirs => {
            return Err(format!("result of {:?} answers another request", env.node))
        }
        (Some(_), None) if body.status != p::Status::Refused => {
            return Err(format!("result of {:?} names no request", env.node))
        }
        _ => {}
    }
    let inner = match (body.sealed, body.result) {
        (Some(sealed), _) => {
            let key = key.ok_or("a sealed result, but no client key to open it")?;
            let plain =
                security::open(key, &sealed).map_err(|e| format!("cannot open the result: {e}"))?;
            serde_json::from_slice::<Value>(&plain)
                .map_err(|e| format!("bad sealed result: {e}"))?
        }
        (None, Some(r)) => serde_json::to_value(r).expect("serializable"),
        (None, None) => return Err("signed result without content".into()),
    };
    match inner {
        // What is shown is the inside: it must name the node and job signed for,
        // or one accepted agent could answer in another's name.
        Value::Object(m) if !names(&m, &env.node, &accepted.uuid) => Err(format!(
            "result signed by {:?} names another node or job inside",
            env.node
        )),
        Value::Object(mut m) => {
            m.insert("verified".into(), Value::Bool(true));
            Ok(m)
        }
        _ => Err("sealed result is not an object".into()),
    }
}

/// An unsigned result proves nothing about who sent it: anyone who can pose
/// as the manager can publish one. A client that signed its request (it has a
/// key) takes none as the node's answer, only the manager's own `no_response`
/// (never `ok`). Only the explicit unsigned mode (no key, for 0.1 managers and
/// agents) shows plain answers, and the client then says they are unverified
/// (see [`unsigned_mode_hint`]).
fn check_unsigned(
    obj: Map<String, Value>,
    accepted: &Accepted,
    key: Option<&KeyPair>,
) -> Result<Map<String, Value>, String> {
    if key.is_none() || crate::report::status_of(&obj) == "no_response" {
        return Ok(obj);
    }
    let node = obj.get("node").and_then(Value::as_str).unwrap_or_default();
    let keyed = accepted
        .agent_keys
        .as_ref()
        .is_some_and(|k| k.contains_key(node));
    Err(if keyed {
        format!("unsigned result for node {node:?}, whose key is known: not accepted")
    } else {
        format!(
            "unsigned result for node {node:?}: nothing proves who sent it (the manager named no \
             key for that node; accept its agent key, or for a 0.1 agent run the client without \
             a key: SERVICE_MGR_KEY=none)"
        )
    })
}

/// What the client says when it ran without a key and showed plain answers:
/// nothing proves who sent them.
fn unsigned_mode_hint(req: &Request, results: &[Value]) -> Option<String> {
    let plain = results
        .iter()
        .filter_map(Value::as_object)
        .filter(|m| m.get("verified") != Some(&Value::Bool(true)))
        .filter(|m| {
            !matches!(
                m.get("status").and_then(Value::as_str),
                Some("unverified" | "no_response")
            )
        })
        .count();
    (req.key.is_none() && plain > 0).then(|| {
        format!(
            "{plain} answer{} unverified: the client has no key (unsigned mode), so nothing proves \
             which node sent {}",
            if plain == 1 { " is" } else { "s are" },
            if plain == 1 { "it" } else { "them" }
        )
    })
}

/// Whether a result object names this node and job.
fn names(m: &Map<String, Value>, node: &str, uuid: &str) -> bool {
    m.get("node").and_then(Value::as_str) == Some(node)
        && m.get("uuid").and_then(Value::as_str) == Some(uuid)
}

/// A result the agent sealed from its own x25519 key needs no signature
/// check: only that agent (or we) can make a ciphertext that opens under the
/// key we share with it, and the plaintext names the job and the node. That
/// spares a client a signature verification per result, a third of its time
/// over a large fleet. Anything else (`None`) takes the signature path.
fn opened_from(
    env: &ResultEnvelope,
    body: &SignedResult,
    agent_line: &str,
    uuid: &str,
    key: Option<&KeyPair>,
) -> Option<Map<String, Value>> {
    let key = key?;
    let sealed = body.sealed.as_ref()?;
    if security::box_key_base64_of_line(agent_line)? != sealed.epk {
        return None;
    }
    let plain = security::open(key, sealed).ok()?;
    let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(&plain) else {
        return None;
    };
    if !names(&m, &env.node, uuid) {
        return None;
    }
    m.insert("verified".into(), Value::Bool(true));
    Some(m)
}

/// What came back for one job.
#[derive(Debug, Clone)]
pub struct Collected {
    pub uuid: String,
    /// Nodes the manager said the request reached; `None` from a 0.1 manager.
    pub expected: Option<Vec<String>>,
    /// Result objects in arrival order, one per node (answers from nodes
    /// nobody expected, e.g. 0.1 agents, included).
    pub results: Vec<Value>,
    pub elapsed: Duration,
    /// How long we waited at most.
    pub waited: Duration,
    /// What the manager said that explains a short answer: agent keys
    /// pending, known topics close to an unknown one. Printed on stderr.
    pub hints: Vec<String>,
    /// Subscribers the manager counted but cannot name (0.1 agents), and
    /// how many answers came from nodes it did not name.
    pub unnamed: usize,
    pub unnamed_answered: usize,
}

/// The manager's explanations in an accept reply, as sentences for the user.
fn hints(accepted: &Accepted, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(n) = accepted.pending_keys {
        out.push(format!(
            "{n} agent key{} pending: service-mgr mgmt keys list (on the manager's host)",
            if n == 1 { "" } else { "s" }
        ));
    }
    if let Some(ms) = accepted.started_ms_ago {
        out.push(format!(
            "the manager started {:.1} s ago and has not yet seen its agents come back: \
             try again in a few seconds",
            ms as f64 / 1000.0
        ));
    }
    if let Some(near) = &accepted.near {
        out.push(format!(
            "no agent has the topic {topic:?}; topics match exactly (-G globs node names); known and close: {}",
            near.join(", ")
        ));
    }
    out
}

/// Told what happens while the client waits, for a live count or `--format jsonl`:
/// `(None, 0, expected)` once the manager has accepted the request, then
/// `(Some(result), answered, expected)` for each new answer as it arrives.
/// `expected` is `None` when the manager cannot say (a 0.1 manager).
pub type Watch<'a> = &'a mut dyn FnMut(Option<&Value>, usize, Option<usize>);

/// Send a request; `follow` instead re-attaches to an earlier job by id.
pub fn collect(
    ctx: &zmq::Context,
    req: &Request,
    log: &Logger,
    watch: Option<Watch<'_>>,
) -> Result<Collected> {
    let mut request = req.request.clone();
    // Results on the request's own connection: only a manager of ours speaks
    // CURVE (a 0.1 one is asked as 0.1 asks).
    request.attach = req.wire.is_curve();
    // The client stops waiting for the accept after its -r tries of -t ms; the
    // deadline is signed, so that nobody runs the request after that.
    let id = req
        .key
        .as_ref()
        .map(|key| sign_until(&mut request, key, Some(accept_wait(req))));
    exchange(
        ctx,
        req,
        &p::encode(&request),
        Some(&request),
        id.as_deref(),
        log,
        watch,
    )
}

/// Re-attach to a job the manager still holds: its results so far, then the rest.
pub fn follow(
    ctx: &zmq::Context,
    req: &Request,
    job: &str,
    log: &Logger,
    watch: Option<Watch<'_>>,
) -> Result<Collected> {
    let payload = p::encode(&FollowRequest {
        attach: req.wire.is_curve(),
        ..FollowRequest::new(job)
    });
    exchange(ctx, req, &payload, None, None, log, watch)
}

/// Ask the manager which nodes a request would reach, running nothing.
pub fn plan(ctx: &zmq::Context, req: &Request, asked: &str) -> Result<Vec<String>> {
    // A 0.1 manager would run the dry run as a real request on every agent
    // of the topic: recognise it first by a harmless question (issue 15).
    let (is_01, endpoint) =
        req.ask(|m, tries| manager_is_01(ctx, m, &req.wire, req.timeout, tries))?;
    if is_01 {
        bail!(
            "{asked} needs a service-mgr 0.2 manager: the manager at {endpoint} is 0.1, which \
             cannot address single nodes and would send the request to every agent of topic {:?}; \
             nothing was sent (leave out {asked}, or upgrade the manager)",
            req.request.topic
        );
    }
    let mut dry = req.request.clone();
    dry.dry_run = true;
    // Should a 0.1 manager get it anyway, a status is harmless.
    dry.cmd = "status".into();
    if let Some(key) = &req.key {
        sign(&mut dry, key);
    }
    let payload = p::encode(&dry);
    let (reply, _) =
        req.ask(|m, tries| transport::request(ctx, m, &req.wire, &payload, req.timeout, tries))?;
    parse_accept(&reply)?.expected.with_context(|| {
        format!("the manager cannot say which nodes a request reaches; {asked} needs a service-mgr 0.2 manager")
    })
}

/// Whether the manager at `endpoint` is a 0.1 one, asked in a way that runs
/// nothing anywhere: following a job nobody has. Ours answers with an error
/// (or the job); a 0.1 manager accepts it as a request to the topic
/// `!follow`, which no agent hears. Completion asks the same way.
pub fn manager_is_01(
    ctx: &zmq::Context,
    endpoint: &str,
    wire: &transport::Wire,
    timeout: Duration,
    retries: u32,
) -> Result<bool> {
    let probe = format!(
        r#"{{"v":{},"job":"{}","topic":"!follow"}}"#,
        p::PROTOCOL_VERSION,
        "0".repeat(32)
    );
    // A 0.1 manager speaks plaintext: over CURVE the manager is ours.
    if wire.is_curve() {
        return Ok(false);
    }
    let reply = transport::request(ctx, endpoint, wire, probe.as_bytes(), timeout, retries)?;
    Ok(serde_json::from_slice::<Accepted>(&reply).is_ok_and(|a| a.v.is_none()))
}

/// The socket options of a connection that receives results.
fn for_results(s: &zmq::Socket) -> Result<()> {
    Ok(s.set_maxmsgsize(p::RESULT_FRAME_LIMIT)?)
}

/// Send `payload` (the signed `request`, or a follow) to the first manager
/// that answers, and collect the results; when that manager goes away
/// before they are all in, another takes the job over ([`take_over`]).
#[allow(clippy::too_many_arguments)]
fn exchange(
    ctx: &zmq::Context,
    req: &Request,
    payload: &[u8],
    request: Option<&ServiceRequest>,
    request_id: Option<&str>,
    log: &Logger,
    mut watch: Option<Watch<'_>>,
) -> Result<Collected> {
    let started = Instant::now();
    let several = req.managers().len() > 1;
    let sent = req.ask(|m, tries| {
        let (reply, conn) = transport::request_keeping(
            ctx,
            m,
            &req.wire,
            payload,
            req.timeout,
            tries,
            for_results,
        )?;
        // A job one manager does not know, another (sharing a job store) may.
        if several && request.is_none() {
            if let Ok(FrontendReply::Refused(e)) = FrontendReply::decode(&reply) {
                return Err(transport::NoAnswer {
                    reached: true,
                    why: format!("{m}: {}", e.msg),
                }
                .into());
            }
        }
        Ok((reply, conn))
    });
    let ((reply, conn), mut endpoint) = sent.map_err(|e| match request_id {
        Some(id) => gave_up(e, req, id),
        None => e,
    })?;
    let host = transport::endpoint_host(&endpoint)
        .with_context(|| format!("endpoint {endpoint} is not tcp://HOST:PORT"))?
        .to_owned();
    let accepted = match FrontendReply::decode(&reply)? {
        FrontendReply::Record(mut r) => {
            // A stored job's results come in pages of bounded size.
            while let Some(offset) = r.next.take() {
                let page = FollowRequest {
                    offset: Some(offset),
                    ..FollowRequest::new(&r.uuid)
                };
                let reply = transport::request(
                    ctx,
                    &endpoint,
                    &req.wire,
                    &p::encode(&page),
                    req.timeout,
                    req.retries,
                )?;
                match FrontendReply::decode(&reply)? {
                    FrontendReply::Record(more)
                        if !more.record.results.is_empty()
                            && more.next.is_none_or(|n| n > offset) =>
                    {
                        r.record.results.extend(more.record.results);
                        r.next = more.next;
                    }
                    FrontendReply::Refused(e) => {
                        bail!(
                            "the manager refused the next page of job {}: {}",
                            r.uuid,
                            e.msg
                        )
                    }
                    _ => bail!(
                        "the manager's page of job {} at offset {offset} makes no progress",
                        r.uuid
                    ),
                }
            }
            return Ok(from_record(*r, req.key.as_deref(), started));
        }
        FrontendReply::Refused(e) => bail!("the manager refused the request: {}", e.msg),
        FrontendReply::Accepted(a) => a,
    };
    debug!(log, "request accepted"; "uuid" => &accepted.uuid, "port" => accepted.port,
        "expected" => ?accepted.expected, "unregistered" => ?accepted.unregistered);

    // The results come on the request's connection, or (a 0.1 manager, or
    // plaintext) from the result publisher, as `[uuid, result]` both ways.
    let attached = accepted.attached && conn.is_some();
    let mut sub = match conn.filter(|_| attached) {
        Some(conn) => conn,
        None => {
            let sub = transport::socket(ctx, zmq::SUB)?;
            req.wire.apply(&sub)?;
            sub.set_maxmsgsize(p::RESULT_FRAME_LIMIT)?;
            sub.set_subscribe(accepted.uuid.as_bytes())?;
            transport::connect(
                &sub,
                &format!("tcp://{host}:{}", accepted.port),
                "the -e endpoint",
            )?;
            sub
        }
    };

    let expected = accepted.expected.clone().or_else(|| req.expect.clone());
    let waited = req.wait.unwrap_or(if expected.is_some() {
        DEFAULT_WAIT
    } else {
        DEFAULT_WAIT_01
    });
    let extra_wanted = accepted.unregistered.unwrap_or(0);
    let deadline = started + waited;
    let mut seen = HashSet::new();
    // Sets, not the lists: a broadcast to thousands is checked per result.
    let wanted: Option<HashSet<&str>> = expected
        .as_ref()
        .map(|e| e.iter().map(String::as_str).collect());
    let mut missing = wanted.as_ref().map_or(0, HashSet::len);
    let mut extra = 0usize;
    let mut results = Vec::new();
    let expected_count = expected.as_ref().map(|e| e.len() + extra_wanted);
    if let Some(w) = watch.as_mut() {
        w(None, 0, expected_count);
    }
    let complete =
        |missing: usize, extra: usize| wanted.is_some() && missing == 0 && extra >= extra_wanted;
    let mut heard = Instant::now();
    let mut ports = vec![accepted.port];
    let mut notes = Vec::new();
    // With several managers the attached connection is watched: a manager
    // that goes away is noticed when its connection closes, not after RECHECK.
    let mut dropped = match attached && several {
        true => Some(transport::watch_disconnects(ctx, &sub)?),
        false => None,
    };
    while !complete(missing, extra) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut incoming = Vec::new();
        let mut items = vec![sub.as_poll_item(zmq::POLLIN)];
        items.extend(dropped.as_ref().map(|w| w.as_poll_item(zmq::POLLIN)));
        let quiet = transport::poll(&mut items, left.min(RECHECK).as_millis().max(1) as i64)? == 0;
        // The connection to the manager closed: another takes over at once.
        let gone = dropped.as_ref().is_some_and(transport::saw_event);
        // Only a 0.2 manager knows `!follow`.
        if gone || (quiet && accepted.v.is_some() && heard.elapsed() >= RECHECK) {
            heard = Instant::now();
            let asked = if gone {
                None
            } else {
                refollow(
                    ctx,
                    req,
                    &endpoint,
                    &accepted.uuid,
                    left,
                    request_id,
                    log,
                    |port| {
                        // An attached connection reconnects by itself.
                        if attached || ports.contains(&port) {
                            return Ok(());
                        }
                        debug!(log, "the manager publishes results on a new port"; "port" => port);
                        ports.push(port);
                        transport::connect(&sub, &format!("tcp://{host}:{port}"), "the -e endpoint")
                    },
                )?
            };
            match asked {
                Some(results) => incoming = results,
                // Silent: gone, or stalled. Another manager takes the job over.
                None if attached && several => {
                    let over = take_over(
                        ctx,
                        req,
                        &endpoint,
                        payload,
                        request,
                        &accepted.uuid,
                        left,
                        request_id,
                        log,
                    )?;
                    if let Some(over) = over {
                        notes.push(format!(
                            "the manager at {endpoint} stopped answering; job {} continued through {}",
                            accepted.uuid, over.manager
                        ));
                        // Nodes the new manager does not reach will not answer: said now.
                        if let (Some(w), Some(reaches)) = (&wanted, &over.reaches) {
                            let silent = w.iter().filter(|n| !seen.contains(**n));
                            incoming.extend(unreached(
                                silent,
                                reaches,
                                &accepted.uuid,
                                &over.manager,
                            ));
                        }
                        sub = over.conn;
                        dropped = Some(transport::watch_disconnects(ctx, &sub)?);
                        endpoint = over.manager;
                        incoming.extend(over.results);
                    }
                }
                None => {}
            }
        }
        while let Some(frames) = transport::try_recv(&sub)? {
            heard = Instant::now();
            let frames = match frames.split_first() {
                Some((delimiter, rest)) if attached && delimiter.is_empty() => rest,
                _ => &frames[..],
            };
            let [topic, body] = frames else {
                continue;
            };
            if topic.as_slice() != accepted.uuid.as_bytes() {
                continue;
            }
            let Ok(frame) = ResultFrame::decode(body) else {
                debug!(log, "unreadable result ignored");
                continue;
            };
            let node = frame.node().map(|n| Value::String(n.to_owned()));
            // A result that does not verify is reported as such, never shown as the node's answer.
            incoming.push(
                verify_result(frame, &accepted, req.key.as_deref(), request_id).unwrap_or_else(
                    |why| unverified(why, node.unwrap_or(Value::Null), &accepted.uuid),
                ),
            );
        }
        for obj in incoming {
            match node_of(&obj) {
                // The manager replays a job's results to a new subscriber; one per node.
                Some(n) if !seen.insert(n.clone()) => continue,
                Some(n) => match &wanted {
                    Some(w) if w.contains(n.as_str()) => missing -= 1,
                    Some(_) => extra += 1,
                    None => {}
                },
                None => extra += 1,
            }
            results.push(Value::Object(obj));
            if let Some(w) = watch.as_mut() {
                w(results.last(), results.len(), expected_count);
            }
        }
    }
    let mut hints = hints(&accepted, &req.request.topic);
    hints.extend(notes);
    hints.extend(unsigned_mode_hint(req, &results));
    let silent = extra_wanted.saturating_sub(extra);
    if wanted.is_some() && silent > 0 {
        hints.push(format!(
            "{silent} of {extra_wanted} unnamed 0.1 agent{} (subscribed to {:?}, unknown to the \
             manager by name) stayed silent within {:.1} s (-w)",
            if extra_wanted == 1 { "" } else { "s" },
            req.request.topic,
            waited.as_secs_f64()
        ));
    }
    Ok(Collected {
        hints,
        uuid: accepted.uuid,
        expected,
        results,
        elapsed: started.elapsed(),
        waited,
        unnamed: extra_wanted,
        unnamed_answered: extra,
    })
}

/// Ask the manager at `endpoint` about a job the client waits for and hears
/// nothing of: a port it publishes the job's results on is passed to
/// `subscribe`; a job it no longer holds in memory (it restarted) comes back
/// as its record, whose answers are returned, checked as if they had just
/// arrived. `None` when it does not answer (restarting, or gone).
#[allow(clippy::too_many_arguments)]
fn refollow(
    ctx: &zmq::Context,
    req: &Request,
    endpoint: &str,
    uuid: &str,
    left: Duration,
    request_id: Option<&str>,
    log: &Logger,
    mut subscribe: impl FnMut(u16) -> Result<()>,
) -> Result<Option<Vec<Map<String, Value>>>> {
    let payload = p::encode(&FollowRequest::new(uuid));
    let reply =
        match transport::request(ctx, endpoint, &req.wire, &payload, req.timeout.min(left), 1) {
            Ok(r) => r,
            Err(e) => {
                debug!(log, "the manager did not answer about the job"; "endpoint" => endpoint,
                "error" => format!("{e:#}"));
                return Ok(None);
            }
        };
    match FrontendReply::decode(&reply) {
        Ok(FrontendReply::Accepted(a)) => {
            subscribe(a.port)?;
            Ok(Some(Vec::new()))
        }
        Ok(FrontendReply::Record(r)) => {
            Ok(Some(record_results(*r, req.key.as_deref(), request_id).1))
        }
        Ok(FrontendReply::Refused(e)) => {
            debug!(log, "the manager knows the job no more"; "why" => e.msg);
            Ok(Some(Vec::new()))
        }
        Err(e) => {
            debug!(log, "unreadable answer about the job"; "error" => format!("{e:#}"));
            Ok(Some(Vec::new()))
        }
    }
}

/// A `no_response` for each of `nodes` that the manager that took job
/// `uuid` over (at `manager`) does not reach: they cannot answer any more.
fn unreached<'n>(
    nodes: impl Iterator<Item = &'n &'n str>,
    reaches: &[String],
    uuid: &str,
    manager: &str,
) -> Vec<Map<String, Value>> {
    let why = format!(
        "no answer: its manager went away, and the manager at {manager} that took the job over \
         does not reach this node"
    );
    nodes
        .filter(|n| !reaches.iter().any(|r| r == **n))
        .filter_map(
            |n| match serde_json::to_value(ResultMsg::no_response(uuid, n, &why)) {
                Ok(Value::Object(m)) => Some(m),
                _ => None,
            },
        )
        .collect()
}

/// A job taken over by another manager.
struct TakenOver {
    conn: zmq::Socket,
    manager: String,
    /// The answers a stored record of the job held.
    results: Vec<Map<String, Value>>,
    /// The nodes the new manager sent the request to (`None`: a record).
    reaches: Option<Vec<String>>,
}

/// The manager at `gone`, which accepted the job, stopped answering: another
/// of the client's managers takes it over. A request goes again under the
/// job's id (`resume`, signed as it was): an agent that answered it answers
/// again from memory, one still running it sends its result to both, and
/// one it never reached runs it only within its deadline. A follow
/// (`--job`) is asked as it was (a shared job store has the job). Returns the
/// new connection, its manager and the answers a stored record holds.
#[allow(clippy::too_many_arguments)]
fn take_over(
    ctx: &zmq::Context,
    req: &Request,
    gone: &str,
    payload: &[u8],
    request: Option<&ServiceRequest>,
    uuid: &str,
    left: Duration,
    request_id: Option<&str>,
    log: &Logger,
) -> Result<Option<TakenOver>> {
    let payload = match request {
        Some(r) => {
            let mut again = r.clone();
            again.resume = Some(uuid.to_owned());
            again.attach = true;
            p::encode(&again)
        }
        None => payload.to_vec(),
    };
    for m in req.managers().into_iter().filter(|m| m != gone) {
        let got = transport::request_keeping(
            ctx,
            &m,
            &req.wire,
            &payload,
            req.timeout.min(left),
            1,
            for_results,
        );
        let (reply, conn) = match got {
            Ok((reply, Some(conn))) => (reply, conn),
            Ok(_) => continue,
            Err(e) => {
                debug!(log, "no manager to take the job over here"; "endpoint" => &m, "error" => format!("{e:#}"));
                continue;
            }
        };
        match FrontendReply::decode(&reply) {
            Ok(FrontendReply::Accepted(a)) if a.uuid == uuid => {
                req.prefer(&m);
                return Ok(Some(TakenOver {
                    conn,
                    manager: m,
                    results: Vec::new(),
                    reaches: a.expected,
                }));
            }
            Ok(FrontendReply::Record(r)) if r.uuid == uuid => {
                req.prefer(&m);
                let results = record_results(*r, req.key.as_deref(), request_id).1;
                return Ok(Some(TakenOver {
                    conn,
                    manager: m,
                    results,
                    reaches: None,
                }));
            }
            Ok(FrontendReply::Refused(e)) => {
                debug!(log, "the manager cannot take the job over"; "endpoint" => &m, "why" => e.msg);
            }
            _ => debug!(log, "unexpected answer to a takeover"; "endpoint" => &m),
        }
    }
    Ok(None)
}

/// The answers a job record holds (a stored `no_response` has none), each
/// checked against the key the manager reports for its node.
fn record_results(
    reply: FollowRecord,
    key: Option<&KeyPair>,
    request_id: Option<&str>,
) -> (crate::protocol::mgmt::JobRecord, Vec<Map<String, Value>>) {
    let FollowRecord {
        agent_keys,
        mut record,
        ..
    } = reply;
    let accepted = Accepted {
        uuid: record.uuid.clone(),
        port: 0,
        v: Some(p::PROTOCOL_VERSION),
        expected: Some(record.expected.clone()),
        unregistered: None,
        agent_keys: Some(agent_keys),
        pending_keys: None,
        near: None,
        attached: false,
        started_ms_ago: None,
    };
    let mut results = Vec::new();
    for r in std::mem::take(&mut record.results) {
        let Value::Object(m) = r.result else {
            continue;
        };
        let frame = ResultFrame::from_object(m);
        results.push(
            verify_result(frame, &accepted, key, request_id)
                .unwrap_or_else(|why| unverified(why, Value::String(r.node), &record.uuid)),
        );
    }
    (record, results)
}

/// What stands for a result that did not verify: never the node's answer.
fn unverified(why: String, node: Value, uuid: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("msg".into(), Value::String(why));
    m.insert("node".into(), node);
    m.insert("uuid".into(), Value::String(uuid.to_owned()));
    m.insert("status".into(), Value::String("unverified".into()));
    m
}

/// A job the manager no longer holds in memory comes back whole from its job
/// store: every result it recorded, checked as if it had just arrived.
fn from_record(reply: FollowRecord, key: Option<&KeyPair>, started: Instant) -> Collected {
    let (record, results) = record_results(reply, key, None);
    Collected {
        uuid: record.uuid,
        expected: Some(record.expected),
        results: results.into_iter().map(Value::Object).collect(),
        elapsed: started.elapsed(),
        waited: Duration::ZERO,
        hints: Vec::new(),
        unnamed: 0,
        unnamed_answered: 0,
    }
}

/// The manager's answer to a request: where its results appear, or why not.
fn parse_accept(reply: &[u8]) -> Result<Accepted> {
    match FrontendReply::decode(reply)? {
        FrontendReply::Accepted(a) => Ok(a),
        FrontendReply::Refused(e) => bail!("the manager refused the request: {}", e.msg),
        FrontendReply::Record(_) => bail!("the manager answered a request with a job record"),
    }
}

/// Every node's outcome, the answers first (0.1 fields kept, `status` added),
/// then a `no_response` line for each expected node that stayed silent, then
/// `skipped` lines (nodes a --fail-fast rollout never reached).
pub fn node_results(jobs: &[Collected], skipped: &[String]) -> Vec<NodeResult> {
    let mut out = Vec::new();
    for job in jobs {
        let mut answered = HashSet::new();
        for r in &job.results {
            let Value::Object(obj) = r else { continue };
            let line = NodeResult::answer(obj.clone());
            if let Some(n) = &line.node {
                answered.insert(n.clone());
            }
            out.push(line);
        }
        for n in job
            .expected
            .iter()
            .flatten()
            .filter(|n| !answered.contains(*n))
        {
            let msg = if job.waited.is_zero() {
                "no answer recorded".to_owned()
            } else {
                format!("no answer within {:.1} s (-w)", job.waited.as_secs_f64())
            };
            out.push(NodeResult::no_response(n, &job.uuid, msg));
        }
        // 0.1 agents the manager counted without a name: silent ones count
        // as such, so the run does not look complete (issue 15).
        if job.expected.is_some() {
            for _ in job.unnamed_answered..job.unnamed {
                let msg = format!(
                    "an unnamed 0.1 agent the manager counted did not answer within {:.1} s (-w)",
                    job.waited.as_secs_f64()
                );
                out.push(NodeResult::silent_unnamed(&job.uuid, msg));
            }
        }
    }
    for n in skipped {
        out.push(NodeResult::skipped(
            n,
            "not run: an earlier batch failed (--fail-fast)",
        ));
    }
    out
}

/// The exit code a report stands for (see `Exit`).
pub fn exit_code(results: &[NodeResult]) -> Exit {
    if results.is_empty() || results.iter().any(|r| r.status == Status::NO_RESPONSE) {
        Exit::NoResponse
    } else if results.iter().any(|r| r.status != Status::OK) {
        Exit::SomeFailed
    } else {
        Exit::Ok
    }
}

/// The report of a run: the job(s), the request, every node's result and a summary.
pub fn report(
    request: &ServiceRequest,
    jobs: &[Collected],
    skipped: &[String],
    elapsed: Duration,
) -> Report {
    let mut expected: Vec<String> = jobs
        .iter()
        .flat_map(|j| j.expected.iter().flatten().cloned())
        .collect();
    expected.extend_from_slice(skipped);
    let mut r = Report::new(
        request.clone(),
        jobs.iter().map(|j| j.uuid.clone()).collect(),
        expected,
        node_results(jobs, skipped),
        elapsed.as_millis() as u64,
    );
    let unnamed: usize = jobs
        .iter()
        .filter(|j| j.expected.is_some())
        .map(|j| j.unnamed)
        .sum();
    r.outline.summary.expected += unnamed;
    // A 0.1 manager names nobody: "expected 0" would be a lie.
    r.outline.summary.expected_unknown =
        !jobs.is_empty() && jobs.iter().all(|j| j.expected.is_none());
    r
}

/// How many nodes a `--batch` value means for `total` nodes: `N` or `N%` (at least 1).
pub fn batch_size(spec: &str, total: usize) -> Result<usize> {
    let size = match spec.strip_suffix('%') {
        Some(pct) => {
            let pct: f64 = pct.trim().parse().ok().filter(|p| *p > 0.0 && *p <= 100.0).with_context(|| {
                format!("--batch {spec}: a percentage must be between 0 and 100")
            })?;
            (total as f64 * pct / 100.0).ceil() as usize
        }
        None => spec
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("--batch {spec}: expected a number of nodes (e.g. 2) or a percentage (e.g. 25%)"))?,
    };
    Ok(size.max(1))
}

/// `service-mgr client` / `service-mgr-client`: one request (or a rollout in
/// batches, or an earlier job), printed in the chosen format.
pub fn run(a: &ClientArgs, legacy_name: bool) -> Result<Exit> {
    let conf = crate::config::client::ClientConf::load(a.conf.as_deref())?;
    let crate::config::client::Connection {
        endpoint,
        key: key_file,
        manager_key,
    } = conf.connection(
        a.endpoint.as_deref(),
        a.key.as_deref(),
        a.manager_key.as_deref(),
    );
    a.check(&endpoint)?;
    let log = &logging::debug_or_quiet(a.debug, "service-mgr-client");
    let wait = a.wait.or(conf.wait).map(Duration::from_secs_f64);
    let format = output::client_format(a.format.or(conf.format()), legacy_name);
    let mut progress = output::Progress::new(format);
    let mut request = ServiceRequest::new(
        a.cmd.as_deref().unwrap_or_default(),
        a.service.as_deref().unwrap_or_default(),
        a.topic.as_deref().unwrap_or(p::TOPIC_ANY),
    );
    request.nodes = a.nodes.clone();
    request.glob = a.glob.clone();
    let key = crate::config::load_client_key(key_file.as_deref())?;
    let manager = crate::config::pin::manager_key(manager_key.as_deref(), &endpoint)?;
    let wire = manager.wire(key.as_deref())?;
    let mut req = Request {
        endpoint,
        preferred: Default::default(),
        request,
        wait,
        retries: a.retries.or(conf.retries).unwrap_or(3),
        timeout: Duration::from_millis(a.timeout.or(conf.timeout).unwrap_or(1000)),
        expect: None,
        key,
        wire,
    };
    // Never terminated: the process exits right after the output, and
    // zmq_ctx_term would first wait for libzmq's reaper and I/O threads to
    // close the (linger 0) sockets and join them, a few tenths of a
    // millisecond of every client run. The kernel closes the connections.
    let ctx = std::mem::ManuallyDrop::new(zmq::Context::new());
    let started = Instant::now();
    let mut jobs = Vec::new();
    let mut skipped = Vec::new();
    if let Some(id) = &a.job {
        jobs.push(follow(
            &ctx,
            &req,
            id,
            log,
            Some(&mut watcher(&mut progress)),
        )?);
    } else if let Some(spec) = &a.batch {
        let nodes = plan(&ctx, &req, "--batch")?;
        let size = batch_size(spec, nodes.len())?;
        let batches: Vec<&[String]> = nodes.chunks(size).collect();
        for (i, batch) in batches.iter().enumerate() {
            if i > 0 && a.batch_wait > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(a.batch_wait));
            }
            req.request.nodes = Some(batch.to_vec());
            let got = collect(&ctx, &req, log, Some(&mut watcher(&mut progress)))?;
            progress.note(&format!(
                "batch {}/{}: {} nodes, job {}",
                i + 1,
                batches.len(),
                batch.len(),
                got.uuid
            ));
            let failed = exit_code(&node_results(std::slice::from_ref(&got), &[])) != Exit::Ok;
            jobs.push(got);
            if failed && a.fail_fast {
                skipped = batches[i + 1..]
                    .iter()
                    .flat_map(|b| b.iter().cloned())
                    .collect();
                break;
            }
        }
        req.request.nodes = a.nodes.clone();
    } else {
        if req.request.nodes.is_some() || req.request.glob.is_some() {
            // A 0.1 manager would ignore -N/-G and broadcast to the whole
            // topic: make sure the manager understands them first.
            let asked = match (&req.request.nodes, &req.request.glob) {
                (Some(n), _) => format!("-N {}", n.join(",")),
                (None, g) => format!("-G {}", g.as_deref().unwrap_or_default()),
            };
            plan(&ctx, &req, &asked)?;
        }
        jobs.push(collect(&ctx, &req, log, Some(&mut watcher(&mut progress)))?);
    }
    progress.finish();
    let report = report(&req.request, &jobs, &skipped, started.elapsed());
    match format {
        Format::Json => println!("{}", output::to_json_pretty(&report)),
        Format::Table => print!("{}", output::client_table(&report, output::Style::stdout())),
        Format::Jsonl => {
            // The answers went out as they arrived; now the silent nodes, then the summary.
            for job in &jobs {
                for r in &node_results(std::slice::from_ref(job), &[])[job.results.len()..] {
                    println!("{}", output::to_json(r));
                }
            }
            for r in node_results(&[], &skipped) {
                println!("{}", output::to_json(&r));
            }
            println!("{}", output::to_json(&report.outline));
        }
        Format::Legacy => {
            println!(
                "{}",
                output::to_json_pretty(&crate::report::legacy(&report.results))
            );
            if report.results.is_empty() {
                // Scripts read stdout; the job id still reaches the person.
                eprintln!(
                    "no node answered (job {})",
                    jobs.first().map_or("-", |j| j.uuid.as_str())
                );
            }
        }
    }
    // Whatever the format, the manager's explanations reach the person (stderr).
    let mut said = HashSet::new();
    for hint in jobs.iter().flat_map(|j| &j.hints) {
        if said.insert(hint) {
            eprintln!("service-mgr: {hint}");
        }
    }
    Ok(exit_code(&report.results))
}

/// A `Watch` for the progress display; answers are typed only when it prints them.
fn watcher(
    progress: &mut output::Progress,
) -> impl FnMut(Option<&Value>, usize, Option<usize>) + '_ {
    move |new, answered, expected| {
        let shown = new
            .filter(|_| progress.prints_answers())
            .and_then(Value::as_object)
            .map(|obj| NodeResult::answer(obj.clone()));
        progress.watch(shown.as_ref(), answered, expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(expected: &[&str], results: Vec<Value>) -> Collected {
        Collected {
            uuid: "u".into(),
            expected: Some(expected.iter().map(|s| s.to_string()).collect()),
            results,
            elapsed: Duration::ZERO,
            waited: Duration::from_secs(1),
            hints: Vec::new(),
            unnamed: 0,
            unnamed_answered: 0,
        }
    }

    /// A result as agent `signer` sends it for `node`, job `uuid`, sealed to `client`.
    fn sealed_result(
        signer: &KeyPair,
        node: &str,
        uuid: &str,
        client: &KeyPair,
    ) -> Map<String, Value> {
        let r = crate::agent::refusal(node, uuid, Some("status"), "test".into());
        let frame = crate::agent::guard::result_frame(
            signer,
            &r,
            Some(client.public()),
            Some("req-1".into()),
            true,
        );
        serde_json::from_slice(&frame).unwrap()
    }

    #[test]
    fn sealed_results_are_believed_only_from_the_nodes_key() {
        use crate::security::Role;
        let client = KeyPair::generate(Role::Client, "alice").unwrap();
        let web1 = KeyPair::generate(Role::Agent, "web1").unwrap();
        let web2 = KeyPair::generate(Role::Agent, "web2").unwrap();
        let accepted: Accepted = serde_json::from_value(json!({
            "uuid": "job-1", "port": 1,
            "agent_keys": {"web1": web1.public().to_string(), "web2": web2.public().to_string()},
        }))
        .unwrap();
        let check = |m: Map<String, Value>| {
            verify_result(
                ResultFrame::from_object(m),
                &accepted,
                Some(&client),
                Some("req-1"),
            )
        };

        let good = check(sealed_result(&web1, "web1", "job-1", &client)).unwrap();
        assert_eq!(good["verified"], true);
        assert_eq!(good["node"], "web1");
        // The seal alone proves the sender: a broken signature does not matter...
        let mut m = sealed_result(&web1, "web1", "job-1", &client);
        m["auth"]["sig"] = json!("AAAA");
        assert_eq!(check(m).unwrap()["verified"], true);
        // ...but another node's key does, as does another job or node inside.
        assert!(check(sealed_result(&web2, "web1", "job-1", &client)).is_err());
        assert!(check(sealed_result(&web1, "web1", "job-0", &client)).is_err());
        let mut m = sealed_result(&web1, "web2", "job-1", &client);
        m["node"] = json!("web1");
        assert!(check(m).is_err());
        // Sealed to somebody else: unreadable, refused.
        let bob = KeyPair::generate(Role::Client, "bob").unwrap();
        assert!(check(sealed_result(&web1, "web1", "job-1", &bob)).is_err());
    }

    /// An unsigned answer proves nothing: with a key it is never the node's,
    /// whatever the manager said about the node; without one (unsigned mode)
    /// it is shown, and the client says it is unverified.
    #[test]
    fn unsigned_answers_are_unverified_unless_the_client_runs_unsigned() {
        use crate::security::Role;
        let client = KeyPair::generate(Role::Client, "alice").unwrap();
        let web1 = KeyPair::generate(Role::Agent, "web1").unwrap();
        let plain = |node: &str, status: &str| {
            json!({"node": node, "uuid": "job-1", "status": status, "msg": "done"})
                .as_object()
                .unwrap()
                .clone()
        };
        let accepted: Accepted = serde_json::from_value(json!({
            "uuid": "job-1", "port": 1, "expected": ["web1", "old1"],
            "agent_keys": {"web1": web1.public().to_string()},
        }))
        .unwrap();
        let check = |m, key| verify_result(ResultFrame::from_object(m), &accepted, key, None);
        for node in ["web1", "old1"] {
            let err = check(plain(node, "ok"), Some(&client)).unwrap_err();
            assert!(err.contains("unsigned result"), "{err}");
            assert!(check(plain(node, "no_response"), Some(&client)).is_ok());
            assert!(check(plain(node, "ok"), None).is_ok());
        }
        let req = |key: Option<std::sync::Arc<KeyPair>>| Request {
            endpoint: "tcp://localhost:5500".into(),
            preferred: Default::default(),
            request: ServiceRequest::new("status", "cron", "any"),
            wait: None,
            retries: 1,
            timeout: Duration::from_secs(1),
            expect: None,
            key,
            wire: transport::Wire::Plain,
        };
        let shown = [
            Value::Object(plain("old1", "ok")),
            Value::Object(plain("web1", "no_response")),
        ];
        let hint = unsigned_mode_hint(&req(None), &shown).unwrap();
        assert!(hint.starts_with("1 answer is unverified"), "{hint}");
        assert_eq!(unsigned_mode_hint(&req(Some(client.into())), &shown), None);
    }

    #[test]
    fn every_expected_node_gets_a_status() {
        let j = job(
            &["a", "b", "c"],
            vec![
                json!({"msg": "x", "result": {"node": "a", "returncode": 0}, "uuid": "u"}),
                json!({"msg": "x", "node": "b", "status": "timeout", "uuid": "u"}),
            ],
        );
        let r = node_results(std::slice::from_ref(&j), &[]);
        let statuses: Vec<(&str, &str)> = r
            .iter()
            .map(|v| (v.node.as_deref().unwrap(), v.status.as_str()))
            .collect();
        assert_eq!(
            statuses,
            [("a", "ok"), ("b", "timeout"), ("c", "no_response")]
        );
        assert_eq!(exit_code(&r), Exit::NoResponse);
        let request = ServiceRequest::new("status", "x", "any");
        let s = report(&request, &[j], &[], Duration::ZERO).outline.summary;
        assert_eq!((s.expected, s.answered), (3, 2));
    }

    #[test]
    fn exit_codes_distinguish_failed_from_silent() {
        let ok = job(&["a"], vec![json!({"node": "a", "status": "ok"})]);
        assert_eq!(exit_code(&node_results(&[ok], &[])), Exit::Ok);
        let failed = job(
            &["a"],
            vec![json!({"result": {"node": "a", "returncode": 3}})],
        );
        assert_eq!(exit_code(&node_results(&[failed], &[])), Exit::SomeFailed);
        assert_eq!(exit_code(&[]), Exit::NoResponse, "nobody answered");
    }

    /// Issue 13.3: a client that gave up says the request was not run, or
    /// (when it reached the manager) that it may have been, with its id.
    #[test]
    fn giving_up_says_whether_the_request_may_have_run() {
        let req = Request {
            endpoint: "tcp://localhost:5500".into(),
            preferred: Default::default(),
            request: ServiceRequest::new("restart", "ghost", "any"),
            wait: None,
            retries: 3,
            timeout: Duration::from_millis(1000),
            expect: None,
            key: None,
            wire: transport::Wire::Plain,
        };
        let no_answer = |reached| {
            anyhow::Error::from(transport::NoAnswer {
                reached,
                why: "no answer from tcp://localhost:5500".into(),
            })
        };
        let not_sent = gave_up(no_answer(false), &req, "r1").to_string();
        assert!(
            not_sent.starts_with(
                "the manager did not accept the request within 3000 ms; it was not run (its \
                 deadline has passed, so no manager or agent will run it)"
            ),
            "{not_sent}"
        );
        let maybe = gave_up(no_answer(true), &req, "r1").to_string();
        assert!(maybe.contains("It may have been dispatched"), "{maybe}");
        assert!(maybe.contains("request id r1"), "{maybe}");
        assert!(!maybe.contains("it was not run"), "{maybe}");
        // Other failures pass unchanged.
        let other = gave_up(anyhow::anyhow!("bad endpoint"), &req, "r1").to_string();
        assert_eq!(other, "bad endpoint");
    }

    #[test]
    fn batch_sizes() {
        assert_eq!(batch_size("2", 10).unwrap(), 2);
        assert_eq!(batch_size("25%", 10).unwrap(), 3);
        assert_eq!(batch_size("1%", 10).unwrap(), 1);
        assert!(batch_size("0", 10).is_err());
        assert!(batch_size("150%", 10).is_err());
        assert!(batch_size("x", 10).is_err());
    }
}
