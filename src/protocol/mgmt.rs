//! Management: REQ → REP on the manager and on each agent. The request, what a
//! shutdown signs, and every reply: status (manager, agent, simulated fleet),
//! the agent registry, the job list and one job's record from the job store.

use super::{decode_object, req_str, take_auth, take_opt_str, DecodeError, REQUEST_LIMIT};
use crate::security::Signed;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Management commands of the manager.
pub const MANAGER_STATUS: &str = "manager.status";
pub const MANAGER_SHUTDOWN: &str = "manager.shutdown";
/// Ours: the agent registry, recent jobs, one job.
pub const MANAGER_AGENTS: &str = "manager.agents";
pub const MANAGER_JOBS: &str = "manager.jobs";
pub const MANAGER_JOB: &str = "manager.job";
/// Ours: remove a lost or stopped agent from the registry (admin), so that
/// requests stop expecting it: `{"cmd": "manager.forget", "node": "web3"}`.
pub const MANAGER_FORGET: &str = "manager.forget";
/// Ours: who asked what where, and what happened, from the job store, one
/// entry per node's answer, newest job first; filtered by `node`, `service`,
/// `since_ms` and `client` (a key's name, key id or line), paged as `manager.jobs`.
pub const MANAGER_HISTORY: &str = "manager.history";
/// Management commands of the agent.
pub const AGENT_STATUS: &str = "agent.status";
pub const AGENT_SHUTDOWN: &str = "agent.shutdown";

/// Jobs per `manager.jobs` page when the request sets no `limit`, and the most it may set.
pub const JOBS_PAGE: usize = 50;
pub const JOBS_PAGE_MAX: usize = 1000;
/// Results per `manager.job` (and follow) page when no `limit` is set, and the most.
pub const RESULTS_PAGE: usize = 1000;
pub const RESULTS_PAGE_MAX: usize = 10_000;
/// Entries per `manager.history` page when no `limit` is set, and the most.
pub const HISTORY_PAGE: usize = 100;
pub const HISTORY_PAGE_MAX: usize = 5000;
/// Stored result bytes per page: a page ends before it would pass this (it
/// holds at least one result), so that no reply grows with the job.
pub const PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Management request (REQ -> REP): `{"cmd": "manager.status"}`.
/// `manager.job` takes `"uuid"`, `manager.forget` takes `"node"`;
/// `manager.jobs` and `manager.job` are paged:
/// `"limit"` (jobs, or results of the job, per page) and `"offset"` (how
/// many to skip: the `next` of the previous page's reply).
///
/// ```json
/// {"cmd": "manager.jobs", "limit": 20, "offset": 40}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MgmtRequest {
    pub cmd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// `manager.forget`: the node to forget; `manager.history`: only this node's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `manager.history`: only requests for this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `manager.history`: only requests made at or after this (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// `manager.history`: only requests signed by this client key (its name,
    /// key id or whole public key line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// A client's signature over a [`MgmtBody`], required for shutdown in secure mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Signed>,
}

impl MgmtRequest {
    pub fn new(cmd: &str) -> Self {
        MgmtRequest {
            cmd: cmd.to_owned(),
            uuid: None,
            limit: None,
            offset: None,
            node: None,
            service: None,
            since_ms: None,
            client: None,
            auth: None,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut m = decode_object(bytes, REQUEST_LIMIT)?;
        let count = |field: &'static str| match m.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(usize::try_from(n).unwrap_or(usize::MAX)))
                .ok_or(DecodeError::WrongType {
                    field,
                    expected: "a non-negative integer",
                }),
        };
        let (limit, offset, since_ms) = (count("limit")?, count("offset")?, count("since_ms")?);
        let cmd = req_str(&m, "cmd")?.to_owned();
        Ok(MgmtRequest {
            cmd,
            uuid: take_opt_str(&mut m, "uuid")?,
            limit,
            offset,
            node: take_opt_str(&mut m, "node")?,
            service: take_opt_str(&mut m, "service")?,
            since_ms: since_ms.map(|n| n as u64),
            client: take_opt_str(&mut m, "client")?,
            auth: take_auth(&mut m)?,
        })
    }
}

/// What a signed management request signs (purpose `request`).
///
/// ```json
/// {"cmd": "agent.shutdown", "id": "69a07b7f...", "ts": 1795836549565, "node": "web1"}
/// ```
/// `node` binds an agent's shutdown to that agent (`null` for the manager).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MgmtBody {
    pub cmd: String,
    pub id: String,
    pub ts: u64,
    #[serde(default)]
    pub node: Option<String>,
}

impl MgmtBody {
    /// Decode the text a signature covered.
    pub fn from_signed(text: &str) -> Result<MgmtBody, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Management reply: `{"success": 0, "msg": "Service Manager Status", "result": {...}}`.
/// A page of `manager.jobs` or `manager.job` that is not the last says
/// where the next one starts: `"next": 50` (send it as `offset`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MgmtReply {
    pub success: i64,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<usize>,
}

impl MgmtReply {
    pub fn ok(msg: &str, result: Option<Value>) -> Self {
        MgmtReply {
            success: 0,
            msg: msg.to_owned(),
            result,
            next: None,
        }
    }
    /// A success carrying one of the typed results below.
    pub fn with<T: Serialize>(msg: &str, result: &T) -> Self {
        Self::ok(
            msg,
            Some(serde_json::to_value(result).expect("protocol types always serialize")),
        )
    }
    pub fn error(msg: impl fmt::Display) -> Self {
        MgmtReply {
            success: -1,
            msg: msg.to_string(),
            result: None,
            next: None,
        }
    }
}

/// 0.1's `uname` array: system, node, release, version, machine, processor.
pub type Uname = [String; 6];

/// The endpoints the manager really bound (ports resolved), for the ready
/// notification and `manager.status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    pub frontend_endpoint: String,
    pub backend_endpoint: String,
    pub sink_endpoint: String,
    pub mgmt_endpoint: String,
    pub result_endpoint: String,
    pub result_publisher_port: u16,
    /// Where Prometheus metrics are served (`HOST:PORT`), when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_endpoint: Option<String>,
    /// The manager's public key line (CURVE server key); absent in plaintext mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_key: Option<String>,
}

/// `manager.status`: 0.1's fields (endpoints as configured), then ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagerStatus {
    pub status: String,
    pub uname: Uname,
    pub frontend_endpoint: String,
    pub backend_endpoint: String,
    pub sink_endpoint: String,
    pub mgmt_endpoint: String,
    pub result_publisher_port: u16,
    pub bound: Bound,
    pub version: String,
    pub agents_up: usize,
    pub allow_unsigned: bool,
    pub jobs_in_memory: usize,
    /// Agent subscriptions per topic, as the backend reports them.
    pub subscriptions: BTreeMap<String, usize>,
    /// What is wrong with the job store (damaged and repaired or moved aside
    /// at start-up); absent when nothing is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_store_warning: Option<String>,
    /// Why key decisions are not shared with the other managers of a
    /// PostgreSQL job store right now; absent when they are (or no such store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sync_warning: Option<String>,
}

/// `agent.status` of a real agent: 0.1's fields, then ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub status: String,
    pub uname: Uname,
    pub manager_endpoint: String,
    pub sink_endpoint: String,
    pub mgmt_endpoint: String,
    pub node: String,
    pub topics: Vec<String>,
    pub running: usize,
    pub instance: String,
    /// The program requests run through (`null` when none was found).
    pub service_manager: Option<String>,
    pub version: String,
    /// Results sent to a CURVE manager and not yet acknowledged as stored
    /// (the outbox; absent against a 0.1 or plaintext manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unacknowledged: Option<usize>,
    /// Unacknowledged results the outbox dropped since the agent started
    /// (over its limits), each also logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unacknowledged_dropped: Option<u64>,
}

/// `agent.status` of `agent --simulate`: the fleet as one agent named `PREFIX*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulatedStatus {
    pub status: String,
    pub simulated: bool,
    pub node: String,
    pub nodes: usize,
    pub manager_endpoint: String,
    pub sink_endpoint: String,
    pub version: String,
}

/// An agent's state as `manager.agents` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Announced itself and is heartbeating, its presence in place.
    Up,
    /// Announced, but its presence subscription is not in place yet: not a target.
    Connecting,
    /// Its connection dropped or it missed heartbeats.
    Lost,
    /// It said goodbye.
    Stopped,
    /// Not an agent yet: its key waits in the key store (`mgmt keys accept`).
    Pending,
    /// Its key is accepted but its announcements are refused: its clock is
    /// off by [`AgentInfo::skew_s`] seconds.
    ClockSkew,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Up => "up",
            AgentState::Connecting => "connecting",
            AgentState::Lost => "lost",
            AgentState::Stopped => "stopped",
            AgentState::Pending => "pending",
            AgentState::ClockSkew => "clock_skew",
        }
    }
}

/// How a clock skew reads: `clock skew (+150 s)` for a clock 150 s ahead.
pub fn clock_skew(skew_s: i64) -> String {
    format!("clock skew ({skew_s:+} s)")
}

/// One entry of `manager.agents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub node: String,
    pub instance: String,
    pub system: String,
    pub release: String,
    pub os_version: String,
    pub topics: Vec<String>,
    pub agent_version: String,
    pub started_ms: u64,
    pub last_seen_ms: u64,
    pub state: AgentState,
    pub running: usize,
    /// The agent's accepted public key line (none for an unsigned agent).
    pub key: Option<String>,
    /// State `clock_skew`: how far its clock is ahead (+) or behind (-), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_s: Option<i64>,
}

/// One node's answer to a job, as the job store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeResult {
    pub node: String,
    /// `ok`, `failed`, `timeout`, `refused` or `no_response` ([`super::Status`]).
    pub status: String,
    pub received_ms: u64,
    /// The result message as the agent sent it (`null` for `no_response`).
    pub result: Value,
}

/// `manager.job` (and a follow request's record): a job with one page of
/// its results, ordered by node name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub uuid: String,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    /// The request as dispatched (cmd, service, target...; no `auth`);
    /// `null` for a stub created by a result whose job the store did not know.
    pub request: Value,
    /// The nodes the request is known to have reached.
    pub expected: Vec<String>,
    /// Who signed the request: the client's public key line (absent: unsigned, or an older store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub results: Vec<NodeResult>,
    /// How many results the job has in all (`results` is one page of them).
    #[serde(default)]
    pub results_total: usize,
    pub finished_ms: Option<u64>,
    /// Results dropped because their node had already answered differently.
    pub conflicts: u64,
}

/// What `manager.history` keeps (every filter set must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    pub node: Option<String>,
    pub service: Option<String>,
    pub since_ms: Option<u64>,
    /// A client key's name, key id or whole line.
    pub client: Option<String>,
}

impl HistoryFilter {
    /// Whether a request signed by `line` (a public key line, `None`:
    /// unsigned) matches the `client` filter.
    pub fn client_matches(&self, line: Option<&str>) -> bool {
        let Some(want) = &self.client else {
            return true;
        };
        let Some(line) = line else { return false };
        let mut words = line.split(' ');
        let (name, id) = (words.nth(2), words.next());
        line == want || name == Some(want.as_str()) || id == Some(want.as_str())
    }
}

/// One entry of `manager.history`: a node's answer to a request.
///
/// ```json
/// {"uuid": "f569...", "requested_ms": 1764294000000, "client": "smgr1 client alice AAAA...",
///  "cmd": "restart", "service": "nginx", "topic": "web", "node": "web1",
///  "status": "ok", "received_ms": 1764294000150}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub uuid: String,
    pub requested_ms: u64,
    /// Who signed the request (absent: unsigned, or not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub cmd: String,
    pub service: String,
    pub topic: String,
    pub node: String,
    /// `ok`, `failed`, `timeout`, `refused` or `no_response`.
    pub status: String,
    pub received_ms: u64,
}

/// One entry of `manager.jobs`: a job without its results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub uuid: String,
    pub created_ms: u64,
    pub request: Value,
    pub expected_count: usize,
    /// Nodes with a real result (`no_response` placeholders not counted).
    pub answered_count: usize,
    /// Stored results per status, `no_response` included.
    pub status_counts: BTreeMap<String, usize>,
    pub finished_ms: Option<u64>,
    /// Who signed the request (see [`JobRecord::client`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

impl MgmtReply {
    /// `Unknown management command "x"; the agent knows a and b`.
    pub fn unknown(cmd: &str, who: &str, known: &[&str]) -> Self {
        let list = match known {
            [a, b] => format!("{a} and {b}"),
            _ => known.join(", "),
        };
        Self::error(format!(
            "Unknown management command {cmd:?}; the {who} knows {list}"
        ))
    }

    /// The answer to a shutdown the gate allowed (`Ok`) or refused.
    pub fn shutdown(allowed: &Result<(), impl fmt::Display>, ok_msg: &str) -> Self {
        match allowed {
            Ok(()) => Self::ok(ok_msg, None),
            Err(why) => Self::error(format!("shutdown refused: {why}")),
        }
    }
}

/// Why a management command that changes something (`manager.shutdown`,
/// `agent.shutdown`) is refused; shared by the manager's and the agent's gate.
/// The texts follow `shutdown refused: ` on the wire.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MgmtRefusal {
    #[error("this command needs a signed request: pass a client key with -k")]
    Unsigned,
    #[error(transparent)]
    Auth(#[from] crate::security::AuthError),
    #[error("bad signed body: {0}")]
    BadBody(#[source] std::sync::Arc<serde_json::Error>),
    #[error("the signed body names another command")]
    OtherCommand,
    #[error("the signed request is not addressed to node {0:?}")]
    NotAddressed(String),
    #[error("this key may read but not shut down; grant it with mgmt_admin_keys in the manager's config")]
    NotAdmin,
}

impl MgmtRefusal {
    /// One short word for counting refusals.
    pub fn reason(&self) -> &'static str {
        match self {
            MgmtRefusal::Unsigned => "unsigned",
            MgmtRefusal::Auth(e) => e.reason(),
            MgmtRefusal::BadBody(_) => "malformed",
            MgmtRefusal::OtherCommand => "mismatch",
            MgmtRefusal::NotAddressed(_) => "not_addressed",
            MgmtRefusal::NotAdmin => "not_admin",
        }
    }
}

/// One exchange on a management REP socket, shared by the manager and both
/// kinds of agent: decode the request, let `handle` answer it, encode the
/// reply. Every frame gets an answer, or the REP socket jams (a 0.1 defect).
pub fn answer(frames: &[Vec<u8>], handle: impl FnOnce(&MgmtRequest) -> MgmtReply) -> Vec<u8> {
    let reply = match frames {
        [one] => match MgmtRequest::decode(one) {
            Ok(req) => handle(&req),
            Err(e) => MgmtReply::error(e),
        },
        _ => MgmtReply::error(format!("expected one JSON frame, got {}", frames.len())),
    };
    super::encode(&reply)
}

#[cfg(test)]
mod tests {
    use crate::protocol::*;
    use serde_json::json;

    #[test]
    fn forget_names_its_node() {
        let req = MgmtRequest::decode(br#"{"cmd": "manager.forget", "node": "web3"}"#).unwrap();
        assert_eq!(
            (req.cmd.as_str(), req.node.as_deref()),
            (MANAGER_FORGET, Some("web3"))
        );
        roundtrip(&req);
        assert!(MgmtRequest::decode(br#"{"cmd": "manager.forget", "node": 3}"#).is_err());
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
}
