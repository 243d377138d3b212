//! The frontend: client REQ ⇄ manager ROUTER. Service requests and what the
//! client signs, the accept reply, and `--job` follow requests with their
//! two kinds of reply (an accept, or the whole record from the job store).

use super::mgmt::JobRecord;
use super::{
    decode_object, take_auth, take_opt_str, take_str, DecodeError, ErrorReply, PROTOCOL_VERSION,
    REQUEST_LIMIT, RESULT_LIMIT, TOPIC_ANY,
};
use crate::security::Signed;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

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
    /// Send the results on this connection (the client is a DEALER), not on
    /// the result publisher: one connection and one CURVE handshake per
    /// request, and no result published before the client subscribed. Not
    /// signed: it says where the sender's own connection gets answers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attach: bool,
    /// The job id another manager gave this very request, which then went
    /// away before the job was done: this manager takes the job over under
    /// that id (several managers, see docs/protocol.md §4.1.1). Not signed:
    /// the signed body and its request id are the first request's, and an
    /// agent that ran it answers again from memory instead of running it twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
}

/// What a client signs: the request, a unique id, the time, and its own public
/// key line (the agent seals the result to it). Agents run only what is signed.
///
/// ```json
/// {"cmd": "restart", "service": "nginx", "topic": "web", "nodes": null, "glob": null,
///  "id": "0b7c...", "ts": 1764294000000, "client": "smgr1 client alice AAAA..."}
/// ```
/// The field order is the signed bytes deployed 0.2 peers produce; keep it.
/// `accept_by` (absent from older clients) is the client's deadline for the
/// manager's accept, unix ms by the client's clock: after it the client has
/// given up, and neither manager nor agent runs the request.
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
    /// When the client stops waiting for the manager's accept (unix ms, its clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_by: Option<u64>,
}

impl RequestBody {
    /// The body that signs `r`: its routing fields, with the id, time and signer.
    pub fn for_request(r: &ServiceRequest, id: String, ts: u64, client: String) -> RequestBody {
        RequestBody {
            cmd: r.cmd.clone(),
            service: r.service.clone(),
            topic: r.topic.clone(),
            nodes: r.nodes.clone(),
            glob: r.glob.clone(),
            id,
            ts,
            client,
            dry_run: r.dry_run,
            accept_by: None,
        }
    }

    /// How long ago (ms) the client's deadline for an accept passed at
    /// `now_ms`; `None` while it still waits, or when it set none. Both
    /// clocks count: a client's clock behind the reader's looks late.
    pub fn late_by(&self, now_ms: u64) -> Option<u64> {
        self.accept_by
            .filter(|by| now_ms > *by)
            .map(|by| now_ms - by)
    }

    /// Whether the routing copy of a request says the same as the signed body.
    pub fn matches(&self, r: &ServiceRequest) -> bool {
        self.cmd == r.cmd
            && self.service == r.service
            && self.topic == r.topic
            && self.nodes == r.nodes
            && self.glob == r.glob
            && self.dry_run == r.dry_run
    }

    /// Decode the text a signature covered.
    pub fn from_signed(text: &str) -> Result<RequestBody, serde_json::Error> {
        serde_json::from_str(text)
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
            attach: false,
            resume: None,
        }
    }

    /// Read a request from an untrusted frontend frame; every field is checked
    /// for presence and type, so a bad request is answered and never crashes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::from_map(decode_object(bytes, REQUEST_LIMIT)?)
    }

    /// The request in an already decoded frame (fields are moved, not copied).
    fn from_map(mut m: Map<String, Value>) -> Result<Self, DecodeError> {
        let cmd = take_str(&mut m, "cmd")?;
        let service = take_str(&mut m, "service")?;
        let not_list = DecodeError::WrongType {
            field: "nodes",
            expected: "a list of strings",
        };
        let nodes = match m.remove("nodes") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or(not_list)?,
            ),
            Some(_) => return Err(not_list),
        };
        let glob = take_opt_str(&mut m, "glob")?;
        let topic = match take_opt_str(&mut m, "topic")? {
            Some(t) => t,
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
        let dry_run = flag(&m, "dry_run")?;
        let attach = flag(&m, "attach")?;
        let resume = take_opt_str(&mut m, "resume")?;
        let auth = take_auth(&mut m)?;
        Ok(ServiceRequest {
            cmd,
            service,
            topic,
            v,
            nodes,
            glob,
            dry_run,
            auth,
            attach,
            resume,
        })
    }
}

/// An optional boolean field (absent or null is false).
fn flag(m: &Map<String, Value>, field: &'static str) -> Result<bool, DecodeError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "true or false",
        }),
    }
}

/// `service-mgr client --job ID`: re-attach to an earlier job.
///
/// ```json
/// {"v": 2, "job": "f5697966...", "topic": "!follow"}
/// ```
/// `topic` keeps a 0.1 manager alive (it dies on a request without one); no
/// agent subscribes to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowRequest {
    pub v: u64,
    pub job: String,
    pub topic: String,
    /// Results to skip: the `next` of the previous page of a stored job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// As in [`ServiceRequest::attach`]: a job still in memory sends its
    /// results on this connection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attach: bool,
}

impl FollowRequest {
    pub fn new(job: &str) -> Self {
        FollowRequest {
            v: PROTOCOL_VERSION,
            job: job.to_owned(),
            topic: "!follow".to_owned(),
            offset: None,
            attach: false,
        }
    }
}

/// A frontend frame, decoded once: a new request, or a follow request (any
/// object with a `job` key; its other fields are ignored).
#[derive(Debug, Clone, PartialEq)]
pub enum FrontendRequest {
    Service(Box<ServiceRequest>),
    Follow {
        job: String,
        offset: usize,
        attach: bool,
    },
}

impl FrontendRequest {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut m = decode_object(bytes, REQUEST_LIMIT)?;
        match m.remove("job") {
            Some(Value::String(job)) => Ok(FrontendRequest::Follow {
                job,
                // A stored job's results come in pages (see FollowRecord::next).
                offset: m
                    .get("offset")
                    .and_then(Value::as_u64)
                    .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)),
                attach: flag(&m, "attach")?,
            }),
            Some(_) => Err(DecodeError::Invalid(
                "field `job` must be a string".to_owned(),
            )),
            None => ServiceRequest::from_map(m).map(|r| FrontendRequest::Service(Box::new(r))),
        }
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
    pub agent_keys: Option<BTreeMap<String, String>>,
    /// Agent keys waiting in the manager's key store: agents that cannot
    /// answer until an operator accepts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_keys: Option<usize>,
    /// When no node matched: topics and node names the manager knows that
    /// are close to the one asked for (topics match exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near: Option<Vec<String>>,
    /// The job's results come on the connection that asked (it asked with
    /// `attach`), as `[uuid, result]` messages after this reply; without it
    /// (a 0.1 manager) the client subscribes to `port`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attached: bool,
    /// When no node matched and the manager started a moment ago (within
    /// its startup grace): how long ago, in ms. Its agents may not have
    /// reconnected yet, so "nobody" may be wrong for a few seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms_ago: Option<u64>,
}

/// The reply to a follow request for a job no longer in memory: its record
/// from the job store, with the key of each expected node.
///
/// ```json
/// {"v": 2, "uuid": "f5da...", "agent_keys": {"web1": "smgr1 agent web1 ..."},
///  "record": {"uuid": "f5da...", "created_ms": 1795835238330, ...}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowRecord {
    pub v: u64,
    pub uuid: String,
    #[serde(default)]
    pub agent_keys: BTreeMap<String, String>,
    pub record: JobRecord,
    /// More results are stored: ask again with this `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<usize>,
}

/// Any reply on the frontend, as the client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum FrontendReply {
    /// `{"success": -1, "msg": ...}`.
    Refused(ErrorReply),
    Accepted(Accepted),
    Record(Box<FollowRecord>),
}

/// Why the client cannot use the manager's reply.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("the manager's answer is unreadable")]
    Unreadable(#[source] DecodeError),
    #[error("the manager's answer lacks uuid or port")]
    NotAccepted(#[source] serde_json::Error),
    #[error("the manager's job record is unreadable")]
    BadRecord(#[source] serde_json::Error),
}

impl FrontendReply {
    /// Decode the manager's reply once: a record (follow of an old job), an
    /// error reply, or an accept.
    pub fn decode(bytes: &[u8]) -> Result<FrontendReply, ReplyError> {
        let m = decode_object(bytes, RESULT_LIMIT).map_err(ReplyError::Unreadable)?;
        if m.contains_key("record") {
            return FollowRecord::deserialize(Value::Object(m))
                .map(|r| FrontendReply::Record(Box::new(r)))
                .map_err(ReplyError::BadRecord);
        }
        if m.get("success").and_then(Value::as_i64) == Some(-1) {
            let msg = match m.get("msg") {
                Some(Value::String(s)) => s.clone(),
                _ => "no reason given".to_owned(),
            };
            return Ok(FrontendReply::Refused(ErrorReply::new(msg)));
        }
        Accepted::deserialize(Value::Object(m))
            .map(FrontendReply::Accepted)
            .map_err(ReplyError::NotAccepted)
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::*;
    use serde_json::json;

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
}
