//! Every message that crosses a socket: the 0.1 shapes and our additions.
//!
//! All payloads are UTF-8 JSON objects; topics and job ids travel as plain
//! UTF-8 frames. `docs/protocol.md` draws the sockets and flows; this module
//! owns the types, the decoders for untrusted bytes and the size limits.
//!
//! Compatibility rule: every message we send is a superset of the 0.1 message
//! (0.1 peers ignore fields they do not know), and every decoder accepts the
//! 0.1 shape. Our own messages carry `"v": PROTOCOL_VERSION` so that a peer can
//! tell a 0.1 sender from ours.

use crate::security::{Sealed, Signed};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Version of our protocol; 0.1 messages carry no `v` field at all.
pub const PROTOCOL_VERSION: u64 = 2;

/// Largest client request or management message we read (bytes).
/// Larger frames get an error reply (the transport limit is `HARD_FRAME_LIMIT`).
pub const REQUEST_LIMIT: usize = 64 * 1024;
/// What an agent accepts from the backend: an accepted request plus the few
/// fields the manager adds (uuid, v). Found by fuzzing: with REQUEST_LIMIT
/// here, a request just under the limit was accepted but refused by agents.
pub const DISPATCH_LIMIT: usize = REQUEST_LIMIT + 4096;
/// Largest result an agent may send to the sink (two capped outputs plus JSON escaping).
pub const RESULT_LIMIT: usize = 160 * 1024 * 1024;
/// Most output an agent may be configured to keep per stream (`max_output`):
/// worst case 6 bytes of JSON per byte of control characters, two streams,
/// 4/3 for sealing, stays under RESULT_LIMIT.
pub const MAX_OUTPUT_LIMIT: u64 = 8 * 1024 * 1024;
/// Transport-level limit (ZMQ_MAXMSGSIZE) for sockets that read requests:
/// a peer sending more is disconnected by libzmq before we allocate it.
pub const HARD_FRAME_LIMIT: i64 = 1024 * 1024;
/// Most frames we accept in one multipart message; more is hostile.
pub const MAX_FRAMES: usize = 16;

/// Management commands of the manager.
pub const MANAGER_STATUS: &str = "manager.status";
pub const MANAGER_SHUTDOWN: &str = "manager.shutdown";
/// Ours: the agent registry, recent jobs, one job.
pub const MANAGER_AGENTS: &str = "manager.agents";
pub const MANAGER_JOBS: &str = "manager.jobs";
pub const MANAGER_JOB: &str = "manager.job";
/// Management commands of the agent.
pub const AGENT_STATUS: &str = "agent.status";
pub const AGENT_SHUTDOWN: &str = "agent.shutdown";

/// The 0.1 topic every agent subscribes to.
pub const TOPIC_ANY: &str = "any";

/// The byte our manager appends to a topic on the backend so that prefix
/// matching becomes exact matching: subscription `web1` is stored as `web1\0`
/// and matches only the message topic `web1\0`, never `web10\0`.
pub const TOPIC_TERMINATOR: u8 = 0;

/// Why untrusted bytes were refused. The `Display` text goes on the wire as
/// the `msg` of an error reply, so it names the problem in user terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("message is not valid UTF-8")]
    NotUtf8,
    #[error("Request message should be in JSON format: {0}")]
    BadJson(String),
    #[error("Request message should be in JSON format (a JSON object, got {0})")]
    NotObject(&'static str),
    #[error("Missing message properties: {0}")]
    Missing(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Decode one payload frame into a JSON object, enforcing the size limit.
pub fn decode_object(bytes: &[u8], limit: usize) -> Result<Map<String, Value>, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(DecodeError::NotObject(json_kind(&other))),
        Err(e) => Err(DecodeError::BadJson(e.to_string())),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A required string field.
pub fn req_str<'a>(m: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, DecodeError> {
    match m.get(field) {
        None | Some(Value::Null) => Err(DecodeError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// An optional string field (absent or null is `None`, another type is an error).
pub fn opt_str<'a>(
    m: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, DecodeError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// Serialize a message to its frame. Our types cannot fail to serialize.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("protocol types always serialize")
}

/// `{"success": -1, "msg": ...}`: the 0.1 error reply, on every socket that has a reply path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub success: i64,
    pub msg: String,
}

impl ErrorReply {
    pub fn new(msg: impl fmt::Display) -> Self {
        ErrorReply {
            success: -1,
            msg: msg.to_string(),
        }
    }
}

/// A client's service request, frontend frame (client REQ -> manager ROUTER).
///
/// ```json
/// {"cmd": "status", "service": "sshd", "topic": "FreeBSD"}
/// ```
/// Ours adds `"v": 2` and may narrow the target: `"nodes": ["web1", "web2"]`
/// (exactly these nodes), `"glob": "web*"` (registered nodes whose name
/// matches), each combined with `topic` (which then defaults to `any`).
/// `"dry_run": true` asks which nodes would answer without running anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRequest {
    pub cmd: String,
    pub service: String,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The client's signature over a [`RequestBody`] that repeats the fields above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Signed>,
}

/// What a client signs: the request, a unique id, the time, and its own public
/// key line (the agent seals the result to it). Agents run only what is signed.
///
/// ```json
/// {"cmd": "restart", "service": "nginx", "topic": "web", "nodes": null, "glob": null,
///  "id": "0b7c...", "ts": 1764294000000, "client": "smgr1 client alice AAAA..."}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestBody {
    pub cmd: String,
    pub service: String,
    pub topic: String,
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    #[serde(default)]
    pub glob: Option<String>,
    pub id: String,
    pub ts: u64,
    pub client: String,
    /// Signed too, so that nobody on the way can turn a plan into a run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl RequestBody {
    /// Whether the routing copy of a request says the same as the signed body.
    pub fn matches(&self, r: &ServiceRequest) -> bool {
        self.cmd == r.cmd
            && self.service == r.service
            && self.topic == r.topic
            && self.nodes == r.nodes
            && self.glob == r.glob
            && self.dry_run == r.dry_run
    }
}

impl ServiceRequest {
    /// A plain request to a topic.
    pub fn new(cmd: &str, service: &str, topic: &str) -> Self {
        ServiceRequest {
            cmd: cmd.to_owned(),
            service: service.to_owned(),
            topic: topic.to_owned(),
            v: Some(PROTOCOL_VERSION),
            nodes: None,
            glob: None,
            dry_run: false,
            auth: None,
        }
    }

    /// Read a request from an untrusted frontend frame; every field is checked
    /// for presence and type, so a bad request is answered and never crashes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let m = decode_object(bytes, REQUEST_LIMIT)?;
        let cmd = req_str(&m, "cmd")?;
        let service = req_str(&m, "service")?;
        let nodes = match m.get("nodes") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(DecodeError::WrongType {
                        field: "nodes",
                        expected: "a list of strings",
                    })?,
            ),
            Some(_) => {
                return Err(DecodeError::WrongType {
                    field: "nodes",
                    expected: "a list of strings",
                })
            }
        };
        let glob = opt_str(&m, "glob")?.map(str::to_owned);
        let topic = match opt_str(&m, "topic")? {
            Some(t) => t.to_owned(),
            None if nodes.is_some() || glob.is_some() => TOPIC_ANY.to_owned(),
            None => return Err(DecodeError::Missing("topic")),
        };
        let v = match m.get("v") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_u64(),
            Some(_) => {
                return Err(DecodeError::WrongType {
                    field: "v",
                    expected: "an integer",
                })
            }
        };
        let dry_run = match m.get("dry_run") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(DecodeError::WrongType {
                    field: "dry_run",
                    expected: "true or false",
                })
            }
        };
        let auth = match m.get("auth") {
            None | Some(Value::Null) => None,
            Some(a) => {
                Some(
                    serde_json::from_value(a.clone()).map_err(|_| DecodeError::WrongType {
                        field: "auth",
                        expected: "a signed envelope {key, body, sig}",
                    })?,
                )
            }
        };
        Ok(ServiceRequest {
            cmd: cmd.to_owned(),
            service: service.to_owned(),
            topic,
            v,
            nodes,
            glob,
            dry_run,
            auth,
        })
    }
}

/// The manager's answer to an accepted request (manager ROUTER -> client REQ).
///
/// ```json
/// {"uuid": "f569796669df4bf6982dd14c704900a0", "port": 41234}
/// ```
/// Our manager adds `"v": 2` and `"expected"`: the nodes it knows the request reached
/// (absent when it cannot know, as with a 0.1 manager).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub uuid: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Vec<String>>,
    /// Subscribers to the topic that are not registered agents (0.1 agents):
    /// they may answer too, and the client waits for that many extra answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unregistered: Option<usize>,
    /// The public key line of each expected node, as the manager accepted it:
    /// the client checks each result's signature against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_keys: Option<std::collections::BTreeMap<String, String>>,
}

/// A request as the manager publishes it on the backend, second frame after the topic.
///
/// ```json
/// {"cmd": "status", "service": "sshd", "topic": "FreeBSD", "uuid": "f5697966..."}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispatch {
    pub cmd: String,
    pub service: String,
    pub topic: String,
    pub uuid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u64>,
    /// The client's signed request, passed on unchanged: the agent checks it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Signed>,
}

impl Dispatch {
    /// Read a backend frame (agent side). A frame without `cmd` or `service`
    /// still yields its uuid, so that the agent can answer it with an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, (Option<String>, DecodeError)> {
        let m = decode_object(bytes, DISPATCH_LIMIT).map_err(|e| (None, e))?;
        let uuid = match opt_str(&m, "uuid") {
            Ok(u) => u.map(str::to_owned),
            Err(e) => return Err((None, e)),
        };
        let field = |name| req_str(&m, name).map(str::to_owned);
        let parsed = (|| {
            Ok::<_, DecodeError>(Dispatch {
                cmd: field("cmd")?,
                service: field("service")?,
                topic: opt_str(&m, "topic")?.unwrap_or_default().to_owned(),
                uuid: uuid.clone().ok_or(DecodeError::Missing("uuid"))?,
                v: m.get("v").and_then(Value::as_u64),
                auth: match m.get("auth") {
                    None | Some(Value::Null) => None,
                    Some(a) => Some(serde_json::from_value(a.clone()).map_err(|_| {
                        DecodeError::WrongType {
                            field: "auth",
                            expected: "a signed envelope {key, body, sig}",
                        }
                    })?),
                },
            })
        })();
        parsed.map_err(|e| (uuid, e))
    }
}

/// Service output: 0.1's README shows a string, its last commit a list of lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Output {
    Text(String),
    Lines(Vec<String>),
}

impl Output {
    /// The output as one string, whichever shape it came in.
    pub fn text(&self) -> String {
        match self {
            Output::Text(s) => s.clone(),
            Output::Lines(lines) => lines.concat(),
        }
    }
}

impl Default for Output {
    fn default() -> Self {
        Output::Text(String::new())
    }
}

/// The outcome of one request on one node, as our agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The command ran and exited 0.
    Ok,
    /// The command ran and failed, or could not be run.
    Failed,
    /// The command outlived its timeout and was killed.
    Timeout,
    /// The agent refused the request (bad name, command not allowed); nothing ran.
    Refused,
    /// The node was expected to answer and did not (set by the manager or client).
    NoResponse,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Refused => "refused",
            Status::NoResponse => "no_response",
        }
    }
}

/// The `result` object of a successful execution (0.1 fields first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    pub node: String,
    pub service: String,
    pub returncode: i64,
    pub stdout: Output,
    pub stderr: Output,
    pub system: String,
    pub version: String,
}

/// A result frame on the sink (agent PUSH -> manager PULL), republished to clients.
///
/// 0.1 success:
/// ```json
/// {"msg": "Executed service status request",
///  "result": {"node": "fbsd-dev", "service": "sshd", "returncode": 0,
///             "stdout": "sshd is running as pid 1768.\n", "stderr": "",
///             "system": "FreeBSD", "version": "FreeBSD 9.2-RELEASE ..."},
///  "uuid": "f569796669df4bf6982dd14c704900a0"}
/// ```
/// 0.1 failure: `{"success": -1, "msg": "Missing message properties", "uuid": "..."}`.
///
/// Ours adds `v`, `node` (also on failures, so every answer names its node),
/// `status`, `cmd`, `duration_ms` and `truncated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMsg {
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ExecResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// For `status`: what the answer means for the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServiceState>,
}

/// What a `status` answer says about the service, from LSB init-script exit
/// codes (0 running, 1-3 not running, 4 unknown) and systemctl's (3 inactive,
/// 4 no such unit), and the messages of service(8) for names it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Running,
    Stopped,
    UnknownService,
    Error,
}

impl ServiceState {
    /// Classify a status command's exit code and output. A service that does
    /// not exist is never "running", whatever the exit code says.
    pub fn from_status(returncode: i64, stdout: &str, stderr: &str) -> ServiceState {
        const UNKNOWN: [&str; 6] = [
            "unrecognized service",
            "does not exist",
            "could not be found",
            "not-found",
            "no such service",
            "unknown service",
        ];
        let text = format!("{stdout}\n{stderr}").to_ascii_lowercase();
        if UNKNOWN.iter().any(|m| text.contains(m)) {
            return ServiceState::UnknownService;
        }
        match returncode {
            0 => ServiceState::Running,
            1..=3 => ServiceState::Stopped,
            4 => ServiceState::UnknownService,
            _ => ServiceState::Error,
        }
    }
}

impl ResultMsg {
    /// A result that the manager or client writes for a node that did not answer.
    pub fn no_response(uuid: &str, node: &str, why: &str) -> ResultMsg {
        ResultMsg {
            msg: why.to_owned(),
            success: Some(-1),
            result: None,
            uuid: Some(uuid.to_owned()),
            v: Some(PROTOCOL_VERSION),
            node: Some(node.to_owned()),
            status: Some(Status::NoResponse),
            cmd: None,
            duration_ms: None,
            truncated: false,
            state: None,
        }
    }

    /// The node that produced this result, from wherever the sender put it.
    pub fn node(&self) -> Option<&str> {
        self.node
            .as_deref()
            .or(self.result.as_ref().map(|r| r.node.as_str()))
    }

    /// The status, derived for 0.1 results that do not carry one.
    pub fn effective_status(&self) -> Status {
        if let Some(s) = self.status {
            return s;
        }
        match (&self.result, self.success) {
            (Some(r), _) if r.returncode == 0 => Status::Ok,
            _ => Status::Failed,
        }
    }
}

/// Management request (REQ -> REP): `{"cmd": "manager.status"}`.
/// `manager.job` takes `"uuid"`, `manager.jobs` an optional `"limit"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MgmtRequest {
    pub cmd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// A client's signature over `{"cmd", "id", "ts"}`, required for shutdown in secure mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Signed>,
}

impl MgmtRequest {
    pub fn new(cmd: &str) -> Self {
        MgmtRequest {
            cmd: cmd.to_owned(),
            uuid: None,
            limit: None,
            auth: None,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let m = decode_object(bytes, REQUEST_LIMIT)?;
        let limit = match m.get("limit") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or(DecodeError::WrongType {
                field: "limit",
                expected: "a non-negative integer",
            })? as usize),
        };
        Ok(MgmtRequest {
            cmd: req_str(&m, "cmd")?.to_owned(),
            uuid: opt_str(&m, "uuid")?.map(str::to_owned),
            limit,
            auth: m
                .get("auth")
                .and_then(|a| serde_json::from_value(a.clone()).ok()),
        })
    }
}

/// Management reply: `{"success": 0, "msg": "Service Manager Status", "result": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MgmtReply {
    pub success: i64,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl MgmtReply {
    pub fn ok(msg: &str, result: Option<Value>) -> Self {
        MgmtReply {
            success: 0,
            msg: msg.to_owned(),
            result,
        }
    }
    pub fn error(msg: impl fmt::Display) -> Self {
        MgmtReply {
            success: -1,
            msg: msg.to_string(),
            result: None,
        }
    }
}

/// The `topic` frame the manager publishes for a target: the topic and our terminator.
pub fn backend_topic(topic: &str) -> Vec<u8> {
    let mut t = topic.as_bytes().to_vec();
    t.push(TOPIC_TERMINATOR);
    t
}

/// The topic named by a backend topic frame, with our terminator removed
/// (a 0.1 manager sends the bare topic).
pub fn parse_backend_topic(frame: &[u8]) -> Option<&str> {
    let bare = frame.strip_suffix(&[TOPIC_TERMINATOR]).unwrap_or(frame);
    std::str::from_utf8(bare).ok()
}

/// Whether `s` is acceptable as a topic or node name: printable, no separators,
/// not empty, at most 255 bytes. Used for agent topics and client targets.
pub fn valid_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        && !s.starts_with('-')
        && !s.starts_with('!')
}

/// The prefix of the agent's presence subscription, `!presence/<instance>`.
/// No request is ever published on it: when the agent's connection drops,
/// libzmq reports its unsubscription, so the manager learns at once that the
/// agent is gone instead of waiting for missed heartbeats.
pub const PRESENCE_PREFIX: &str = "!presence/";

/// The topic prefix of an agent's private topic, `!to/<instance>`: in secure
/// mode the manager subscribes an agent's connection to it only after the
/// agent proved its accepted key, and publishes its requests there.
pub const PRIVATE_PREFIX: &str = "!to/";

/// An agent's private topic, `!to/<node>/<instance>`. The node name comes from
/// the key that signed the presence token, so an accepted key of one node can
/// never be granted another node's requests.
pub fn private_topic(node: &str, instance: &str) -> String {
    format!("{PRIVATE_PREFIX}{node}/{instance}")
}

/// An agent's presence subscription. Unsigned: `!presence/<instance>`; signed:
/// `!presence/<instance>|<ts>|<key id>|<sig>`, the signature (purpose
/// announce) over the JSON string `"<instance>:<ts>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub instance: String,
    pub signed: Option<(u64, Signed)>,
}

impl Presence {
    pub fn token(&self) -> String {
        match &self.signed {
            None => format!("{PRESENCE_PREFIX}{}", self.instance),
            Some((ts, s)) => format!(
                "{PRESENCE_PREFIX}{}|{ts}|{}|{}",
                self.instance, s.key, s.sig
            ),
        }
    }

    /// The text the agent signs for a presence token.
    pub fn signed_text(instance: &str, ts: u64) -> Value {
        Value::String(format!("{instance}:{ts}"))
    }

    pub fn parse(topic: &str) -> Option<Presence> {
        let rest = topic.strip_prefix(PRESENCE_PREFIX)?;
        let mut parts = rest.split('|');
        let instance = parts.next()?.to_owned();
        let signed = match (parts.next(), parts.next(), parts.next()) {
            (Some(ts), Some(key), Some(sig)) => {
                let ts: u64 = ts.parse().ok()?;
                let body = serde_json::to_string(&Self::signed_text(&instance, ts)).ok()?;
                Some((
                    ts,
                    Signed {
                        key: key.to_owned(),
                        body,
                        sig: sig.to_owned(),
                    },
                ))
            }
            _ => None,
        };
        Some(Presence { instance, signed })
    }
}

/// What an agent says about itself on the sink (ours only; 0.1 agents are silent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnnounceKind {
    /// First message after start.
    #[serde(rename = "agent.hello")]
    Hello,
    /// Every `interval_ms`; carries everything a hello does, so a restarted
    /// manager learns the agent from the next heartbeat.
    #[serde(rename = "agent.heartbeat")]
    Heartbeat,
    /// A clean stop.
    #[serde(rename = "agent.bye")]
    Bye,
}

/// An agent's announcement on the sink.
///
/// ```json
/// {"type": "agent.hello", "v": 2, "node": "web1", "instance": "6f1c...",
///  "system": "Linux", "release": "6.1.0", "os_version": "#1 SMP ...",
///  "topics": ["Linux", "any", "web", "web1"], "agent_version": "0.2.0",
///  "started_ms": 1764294000000, "interval_ms": 2000, "running": 0}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announce {
    #[serde(rename = "type")]
    pub kind: AnnounceKind,
    pub v: u64,
    pub node: String,
    /// Unique per agent process; ties the announcement to its presence subscription.
    pub instance: String,
    pub system: String,
    pub release: String,
    pub os_version: String,
    pub topics: Vec<String>,
    pub agent_version: String,
    pub started_ms: u64,
    pub interval_ms: u64,
    #[serde(default)]
    pub running: usize,
    /// The agent's signature over this whole object (less `auth`) plus
    /// `"key": LINE` and `"ts"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Signed>,
    /// Always `"!announce"`: a 0.1 manager dies on a sink message without a
    /// uuid, and republishes this one on a topic no client subscribes to.
    #[serde(default = "announce_uuid")]
    pub uuid: String,
}

fn announce_uuid() -> String {
    ANNOUNCE_UUID.to_owned()
}

/// The `uuid` of every announcement (see [`Announce::uuid`]).
pub const ANNOUNCE_UUID: &str = "!announce";

/// A message on the sink: an agent's announcement or a result.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkMessage {
    Announce(Announce),
    /// A result, kept as received (it is republished unchanged), with the
    /// fields the manager routes by.
    Result {
        uuid: String,
        node: Option<String>,
        status: Status,
        /// The agent's signature (ours in secure mode), checked by manager and client.
        auth: Option<Signed>,
        /// The whole result object, as received.
        body: Value,
    },
}

impl SinkMessage {
    pub fn decode(bytes: &[u8]) -> Result<SinkMessage, DecodeError> {
        let m = decode_object(bytes, RESULT_LIMIT)?;
        if let Some(kind) = opt_str(&m, "type")? {
            if kind.starts_with("agent.") {
                let a: Announce = serde_json::from_value(Value::Object(m))
                    .map_err(|e| DecodeError::Invalid(format!("bad agent announcement: {e}")))?;
                return Ok(SinkMessage::Announce(a));
            }
        }
        let uuid = req_str(&m, "uuid")?.to_owned();
        let node = m
            .get("node")
            .or_else(|| m.get("result").and_then(|r| r.get("node")))
            .and_then(Value::as_str)
            .map(str::to_owned);
        // Derive the status the way ResultMsg does, without requiring its full shape.
        let status = match m
            .get("status")
            .cloned()
            .map(serde_json::from_value::<Status>)
        {
            Some(Ok(s)) => s,
            _ => match m
                .get("result")
                .and_then(|r| r.get("returncode"))
                .and_then(Value::as_i64)
            {
                Some(0) => Status::Ok,
                _ => Status::Failed,
            },
        };
        let auth = m
            .get("auth")
            .and_then(|a| serde_json::from_value(a.clone()).ok());
        Ok(SinkMessage::Result {
            uuid,
            node,
            status,
            auth,
            body: Value::Object(m),
        })
    }
}

/// A result of ours in secure mode (agent PUSH -> manager -> client). The
/// routing fields stay readable; `auth` is the agent's signature over a
/// [`SignedResult`], whose `sealed` holds the full [`ResultMsg`] encrypted to
/// the requesting client's key (or `result` in clear when the request was not
/// signed and there is no key to seal to).
///
/// ```json
/// {"v": 2, "uuid": "f569...", "node": "web1", "status": "ok", "msg": "sealed result",
///  "auth": {"key": "AAAA...", "body": "{\"uuid\": ...}", "sig": "..."}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultEnvelope {
    pub v: u64,
    pub uuid: String,
    pub node: String,
    pub status: Status,
    pub msg: String,
    pub auth: Signed,
}

/// What an agent signs for a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedResult {
    pub uuid: String,
    pub node: String,
    pub status: Status,
    /// The id of the signed request it answers, if it was signed.
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultMsg>,
}

/// Why a service name or command is refused before anything runs.
/// A plain name: letters, digits and `_ . @ : + -`, not starting with `-` or `.`,
/// 1 to 255 bytes. That rules out paths (`../x`), options (`-h`) and shell
/// syntax (`a;b`), whatever the service manager would make of them.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("service name is empty".into());
    }
    if name.len() > 255 {
        return Err(format!(
            "service name is {} bytes long; the limit is 255",
            name.len()
        ));
    }
    if name.starts_with('-') || name.starts_with('.') {
        return Err(format!(
            "service name {name:?} may not start with '-' or '.'"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.@:+-".contains(*c)))
    {
        return Err(format!("service name {name:?} contains {c:?}; only letters, digits and _ . @ : + - are allowed"));
    }
    Ok(())
}

/// A command must be one plain lower-case word (`start`, `status`, `condrestart`);
/// which words an agent runs is its own allow-list.
pub fn check_command_word(cmd: &str) -> Result<(), String> {
    let ok = !cmd.is_empty()
        && cmd.len() <= 32
        && cmd
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !cmd.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("command {cmd:?} is not a plain command word such as start, stop, restart, reload or status"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(v: &T) {
        let bytes = encode(v);
        let back: T = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(&back, v);
    }

    #[test]
    fn request_roundtrip_and_01_shape() {
        let r =
            ServiceRequest::decode(br#"{"cmd": "status", "service": "sshd", "topic": "FreeBSD"}"#)
                .unwrap();
        assert_eq!(r.topic, "FreeBSD");
        assert_eq!(r.v, None);
        // What we send is exactly 0.1's object plus `v`.
        let ours = ServiceRequest::new("status", "sshd", "FreeBSD");
        assert_eq!(
            serde_json::to_value(&ours).unwrap(),
            json!({"cmd": "status", "service": "sshd", "topic": "FreeBSD", "v": 2})
        );
        roundtrip(&ours);
        roundtrip(&r);
    }

    #[test]
    fn request_rejects_bad_input_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "JSON format"),
            (b"[1,2]", "an array"),
            (b"\xff\xfe", "UTF-8"),
            (br#"{"cmd": "status", "service": "sshd"}"#, "topic"),
            (
                br#"{"cmd": "status", "service": "sshd", "topic": 5}"#,
                "`topic` must be a string",
            ),
            (br#"{"cmd": 1, "service": "sshd", "topic": "any"}"#, "`cmd`"),
        ];
        for (bytes, needle) in cases {
            let err = ServiceRequest::decode(bytes).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        let big = vec![b' '; REQUEST_LIMIT + 1];
        assert!(matches!(
            ServiceRequest::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn accepted_roundtrip_and_01_shape() {
        let a: Accepted =
            serde_json::from_str(r#"{"uuid": "f569796669df4bf6982dd14c704900a0", "port": 5701}"#)
                .unwrap();
        assert_eq!(a.port, 5701);
        assert_eq!(a.expected, None);
        roundtrip(&a);
        let ours = Accepted {
            v: Some(2),
            expected: Some(vec!["web1".into()]),
            ..a
        };
        roundtrip(&ours);
    }

    #[test]
    fn dispatch_roundtrip_and_missing_fields_keep_uuid() {
        let d = Dispatch {
            cmd: "status".into(),
            service: "sshd".into(),
            topic: "any".into(),
            uuid: "abc".into(),
            v: Some(2),
            auth: None,
        };
        roundtrip(&d);
        assert_eq!(Dispatch::decode(&encode(&d)).unwrap(), d);
        let (uuid, err) = Dispatch::decode(br#"{"uuid": "u1", "cmd": "status"}"#).unwrap_err();
        assert_eq!(uuid.as_deref(), Some("u1"));
        assert!(err.to_string().contains("service"));
    }

    /// The README's FreeBSD `status sshd` answer, byte for byte what 0.1 agents send.
    const GOLDEN_01_RESULT: &str = r##"{
        "msg": "Executed service status request",
        "result": {
            "node": "fbsd-dev",
            "returncode": 0,
            "service": "sshd",
            "stdout": "sshd is running as pid 1768.\n",
            "system": "FreeBSD",
            "version": "FreeBSD 9.2-RELEASE #0 r255898: Thu Sep 26 22:50:31 UTC 2013     root@bake.isc.freebsd.org:/usr/obj/usr/src/sys/GENERIC",
            "stderr": ""
        },
        "uuid": "f569796669df4bf6982dd14c704900a0"
    }"##;

    /// The README's Debian `status dummy` answer from the discovery example.
    const GOLDEN_01_UNRECOGNIZED: &str = r##"{
        "msg": "Executed service status request",
        "result": {
            "node": "debian-dev",
            "returncode": 1,
            "service": "dummy",
            "stdout": "",
            "system": "Linux",
            "version": "#1 SMP Debian 3.2.51-1",
            "stderr": "dummy: unrecognized service\n"
        },
        "uuid": "75375cec60854df1b86888b5342bd0a9"
    }"##;

    #[test]
    fn golden_01_results_decode_and_reencode_unchanged() {
        for golden in [GOLDEN_01_RESULT, GOLDEN_01_UNRECOGNIZED] {
            let r: ResultMsg = serde_json::from_str(golden).unwrap();
            // Re-encoding a 0.1 result adds nothing: the client prints what the agent sent.
            let original: Value = serde_json::from_str(golden).unwrap();
            assert_eq!(serde_json::to_value(&r).unwrap(), original);
            roundtrip(&r);
        }
        let ok: ResultMsg = serde_json::from_str(GOLDEN_01_RESULT).unwrap();
        assert_eq!(ok.node(), Some("fbsd-dev"));
        assert_eq!(ok.effective_status(), Status::Ok);
        let bad: ResultMsg = serde_json::from_str(GOLDEN_01_UNRECOGNIZED).unwrap();
        assert_eq!(bad.effective_status(), Status::Failed);
    }

    #[test]
    fn output_accepts_string_and_list_of_lines() {
        let lines: ResultMsg = serde_json::from_value(json!({
            "msg": "Executed service status request",
            "result": {"node": "n", "service": "s", "returncode": 0,
                       "stdout": ["a\n", "b\n"], "stderr": [], "system": "Linux", "version": "v"},
            "uuid": "u"
        }))
        .unwrap();
        let r = lines.result.as_ref().unwrap();
        assert_eq!(r.stdout.text(), "a\nb\n");
        assert_eq!(r.stderr.text(), "");
        roundtrip(&lines);
    }

    #[test]
    fn error_results_of_01_decode() {
        let r: ResultMsg = serde_json::from_value(json!({
            "success": -1, "msg": "Unable to determine location to service(8)",
            "node": "h1", "uuid": "u"}))
        .unwrap();
        assert_eq!(r.node(), Some("h1"));
        assert_eq!(r.effective_status(), Status::Failed);
        roundtrip(&r);
    }

    #[test]
    fn our_result_roundtrip() {
        let r = ResultMsg {
            msg: "Executed service status request".into(),
            success: None,
            result: Some(ExecResult {
                node: "web1".into(),
                service: "nginx".into(),
                returncode: 3,
                stdout: Output::Text("stopped\n".into()),
                stderr: Output::default(),
                system: "Linux".into(),
                version: "#1 SMP".into(),
            }),
            uuid: Some("u".into()),
            v: Some(2),
            node: Some("web1".into()),
            status: Some(Status::Failed),
            cmd: Some("status".into()),
            duration_ms: Some(12),
            truncated: false,
            state: Some(ServiceState::Stopped),
        };
        roundtrip(&r);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "failed");
        assert!(v.get("truncated").is_none());
    }

    #[test]
    fn mgmt_roundtrip_and_errors() {
        let req = MgmtRequest::decode(br#"{"cmd": "manager.status"}"#).unwrap();
        assert_eq!(req.cmd, MANAGER_STATUS);
        roundtrip(&req);
        assert!(MgmtRequest::decode(b"{}")
            .unwrap_err()
            .to_string()
            .contains("cmd"));
        let reply = MgmtReply::ok("Service Manager Status", Some(json!({"status": "running"})));
        roundtrip(&reply);
        assert_eq!(
            serde_json::to_value(MgmtReply::error("nope")).unwrap(),
            json!({"success": -1, "msg": "nope"})
        );
        roundtrip(&ErrorReply::new("x"));
    }

    #[test]
    fn backend_topics_match_exactly() {
        assert_eq!(backend_topic("web1"), b"web1\0");
        assert_eq!(parse_backend_topic(b"web1\0"), Some("web1"));
        assert_eq!(parse_backend_topic(b"web1"), Some("web1"));
        // The terminator is what makes `web1` not a prefix of `web10`.
        assert!(!backend_topic("web10").starts_with(&backend_topic("web1")));
    }

    #[test]
    fn topic_validation() {
        for good in ["any", "Linux", "web-01.example.com", "db_2"] {
            assert!(valid_topic(good), "{good}");
        }
        for bad in ["", " db", "a,b", "-x", "a b", "\u{0}", &"x".repeat(256)] {
            assert!(!valid_topic(bad), "{bad:?}");
        }
    }
    #[test]
    fn hostile_service_names_are_refused() {
        for bad in [
            "../x",
            "-h",
            "a;b",
            "",
            "a b",
            "x/y",
            ".hidden",
            "$(id)",
            "a\nb",
            &"s".repeat(256),
        ] {
            assert!(check_service_name(bad).is_err(), "{bad:?}");
        }
        for good in ["sshd", "nginx", "getty@tty1", "php7.4-fpm", "a_b", "x+y"] {
            assert!(check_service_name(good).is_ok(), "{good:?}");
        }
        assert!(check_command_word("status").is_ok());
        for bad in ["", "-h", "STATUS", "st;op", "a b"] {
            assert!(check_command_word(bad).is_err(), "{bad:?}");
        }
    }
    #[test]
    fn narrowed_targets_and_dry_run() {
        let r = ServiceRequest::decode(
            br#"{"cmd": "restart", "service": "nginx", "nodes": ["web1", "web2"]}"#,
        )
        .unwrap();
        assert_eq!(r.topic, "any");
        assert_eq!(
            r.nodes.as_deref(),
            Some(&["web1".to_string(), "web2".to_string()][..])
        );
        roundtrip(&r);
        let r = ServiceRequest::decode(br#"{"cmd": "status", "service": "x", "topic": "Linux", "glob": "web*", "dry_run": true}"#).unwrap();
        assert!(r.dry_run);
        assert_eq!(r.glob.as_deref(), Some("web*"));
        roundtrip(&r);
        let err = ServiceRequest::decode(br#"{"cmd": "status", "service": "x", "nodes": [1]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("`nodes`"));
    }

    #[test]
    fn announcements_and_results_on_the_sink() {
        let a = Announce {
            kind: AnnounceKind::Hello,
            v: 2,
            node: "web1".into(),
            instance: "i1".into(),
            system: "Linux".into(),
            release: "6.1".into(),
            os_version: "#1".into(),
            topics: vec!["any".into(), "web1".into()],
            agent_version: "0.2.0".into(),
            started_ms: 1,
            interval_ms: 2000,
            running: 0,
            auth: None,
            uuid: ANNOUNCE_UUID.to_owned(),
        };
        roundtrip(&a);
        assert_eq!(serde_json::to_value(&a).unwrap()["type"], "agent.hello");
        assert_eq!(
            SinkMessage::decode(&encode(&a)).unwrap(),
            SinkMessage::Announce(a)
        );
        match SinkMessage::decode(GOLDEN_01_RESULT.as_bytes()).unwrap() {
            SinkMessage::Result {
                uuid, node, status, ..
            } => {
                assert_eq!(uuid, "f569796669df4bf6982dd14c704900a0");
                assert_eq!(node.as_deref(), Some("fbsd-dev"));
                assert_eq!(status, Status::Ok);
            }
            other => panic!("{other:?}"),
        }
        assert!(SinkMessage::decode(br#"{"msg": "x"}"#)
            .unwrap_err()
            .to_string()
            .contains("uuid"));
        assert!(SinkMessage::decode(br#"{"type": "agent.hello"}"#).is_err());
    }

    #[test]
    fn status_answers_map_to_states() {
        use ServiceState::*;
        assert_eq!(
            ServiceState::from_status(0, "sshd is running as pid 1768.\n", ""),
            Running
        );
        assert_eq!(ServiceState::from_status(3, "", ""), Stopped);
        assert_eq!(
            ServiceState::from_status(1, "", "dummy: unrecognized service\n"),
            UnknownService
        );
        assert_eq!(
            ServiceState::from_status(
                1,
                "dummy does not exist in /etc/rc.d or the local startup\n",
                ""
            ),
            UnknownService
        );
        assert_eq!(
            ServiceState::from_status(4, "Unit x.service could not be found.", ""),
            UnknownService
        );
        // Exit 0 with "not found" text is still not "running".
        assert_eq!(
            ServiceState::from_status(0, "", "Unit foo.service could not be found."),
            UnknownService
        );
        assert_eq!(ServiceState::from_status(150, "", ""), Error);
    }
}
