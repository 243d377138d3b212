//! The client (`service-mgr-client`): sends one request to the manager's
//! frontend, subscribes to its job id on the result publisher and collects
//! what the agents answer.

use crate::protocol::{self as p, Accepted, ServiceRequest};
use crate::transport;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use slog::{debug, Logger};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// One request as the user gave it.
#[derive(Debug, Clone)]
pub struct Request {
    pub endpoint: String,
    pub topic: String,
    pub cmd: String,
    pub service: String,
    /// Upper bound on how long to wait for results.
    pub wait: Duration,
    pub retries: u32,
    pub timeout: Duration,
    /// Nodes to wait for when the manager does not say (a 0.1 manager).
    pub expect: Option<Vec<String>>,
}

/// What came back for one request.
#[derive(Debug, Clone)]
pub struct Collected {
    pub uuid: String,
    /// Nodes the manager said the request reached; `None` from a 0.1 manager.
    pub expected: Option<Vec<String>>,
    /// Result objects in arrival order, one per node.
    pub results: Vec<Value>,
    pub elapsed: Duration,
}

/// Send the request and collect results until every expected node answered or
/// `wait` ran out.
pub fn collect(ctx: &zmq::Context, req: &Request, log: &Logger) -> Result<Collected> {
    let started = Instant::now();
    let host = transport::endpoint_host(&req.endpoint)
        .with_context(|| format!("endpoint {} is not tcp://HOST:PORT", req.endpoint))?;
    let payload = p::encode(&ServiceRequest {
        cmd: req.cmd.clone(),
        service: req.service.clone(),
        topic: req.topic.clone(),
        v: Some(p::PROTOCOL_VERSION),
    });
    let reply = transport::request(ctx, &req.endpoint, &payload, req.timeout, req.retries)?;
    let accepted = parse_accept(&reply)?;
    debug!(log, "request accepted"; "uuid" => &accepted.uuid, "port" => accepted.port,
        "expected" => ?accepted.expected);

    let sub = transport::socket(ctx, zmq::SUB)?;
    sub.set_maxmsgsize(p::RESULT_LIMIT as i64)?;
    sub.set_subscribe(accepted.uuid.as_bytes())?;
    let results_endpoint = format!("tcp://{host}:{}", accepted.port);
    transport::connect(&sub, &results_endpoint, "the -e endpoint")?;

    let mut seen_nodes = HashSet::new();
    let mut results = Vec::new();
    let deadline = started + req.wait;
    let expected = accepted.expected.clone().or_else(|| req.expect.clone());
    let done = |seen: &HashSet<String>| match &expected {
        Some(nodes) => nodes.iter().all(|n| seen.contains(n)),
        None => false,
    };
    while !done(&seen_nodes) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut items = [sub.as_poll_item(zmq::POLLIN)];
        if transport::poll(&mut items, left.as_millis().max(1) as i64)? == 0 {
            continue;
        }
        while let Some(frames) = transport::try_recv(&sub)? {
            let [topic, body] = frames.as_slice() else { continue };
            if topic.as_slice() != accepted.uuid.as_bytes() {
                continue;
            }
            let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
                debug!(log, "unreadable result ignored");
                continue;
            };
            let node = node_of(&obj);
            // The manager may replay a job's results to a new subscriber; keep one per node.
            if let Some(n) = &node {
                if !seen_nodes.insert(n.clone()) {
                    continue;
                }
            }
            results.push(Value::Object(obj));
        }
    }
    Ok(Collected {
        uuid: accepted.uuid,
        expected: accepted.expected,
        results,
        elapsed: started.elapsed(),
    })
}

fn parse_accept(reply: &[u8]) -> Result<Accepted> {
    let obj = p::decode_object(reply, p::RESULT_LIMIT).context("the manager's answer is unreadable")?;
    if obj.get("success").and_then(Value::as_i64) == Some(-1) {
        let msg = obj.get("msg").and_then(Value::as_str).unwrap_or("no reason given");
        bail!("the manager refused the request: {msg}");
    }
    serde_json::from_value(Value::Object(obj)).context("the manager's answer lacks uuid or port")
}

/// The node a result came from, wherever its sender put it.
pub fn node_of(obj: &serde_json::Map<String, Value>) -> Option<String> {
    obj.get("node")
        .or_else(|| obj.get("result").and_then(|r| r.get("node")))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// JSON the way 0.1 printed it: indented by four spaces.
pub fn to_json_pretty(v: &impl serde::Serialize) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).expect("JSON values always serialize");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}
