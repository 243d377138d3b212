//! Every message that crosses a socket: the 0.1 shapes and our additions,
//! one file per socket (see the table below), decoded once at the edge.
//!
//! All payloads are UTF-8 JSON objects; topics and job ids travel as plain
//! UTF-8 frames. `docs/protocol.md` draws the sockets and flows; this module
//! owns the types, the decoders for untrusted bytes and the size limits.
//!
//! | file | socket | messages |
//! |---|---|---|
//! | [`frontend`] | client REQ ⇄ manager ROUTER | request, accept, error, follow and its record reply |
//! | [`backend`] | manager XPUB → agent SUB | dispatch, topics, presence, welcome |
//! | [`sink`] | agent PUSH → manager PULL | announcements, results as routed |
//! | [`results`] | manager XPUB → client SUB | result messages, signed envelopes |
//! | [`mgmt`] | REQ ⇄ REP (manager and agent) | management requests and every reply |
//!
//! Compatibility rule: every message we send is a superset of the 0.1 message
//! (0.1 peers ignore fields they do not know), and every decoder accepts the
//! 0.1 shape. Our own messages carry `"v": PROTOCOL_VERSION` so that a peer can
//! tell a 0.1 sender from ours.

pub mod backend;
pub mod frontend;
pub mod mgmt;
pub mod results;
pub mod sink;

pub use backend::{
    backend_topic, parse_backend_topic, private_topic, Ack, BackendMessage, Dispatch, ManagerHello,
    Presence, Welcome, ACKS_TOPIC, ACK_UUIDS_MAX, PRESENCE_PREFIX, PRIVATE_PREFIX,
};
pub use frontend::{
    Accepted, FollowRecord, FollowRequest, FrontendReply, FrontendRequest, ReplyError, RequestBody,
    ServiceRequest,
};
pub use mgmt::{
    MgmtBody, MgmtRefusal, MgmtReply, MgmtRequest, AGENT_SHUTDOWN, AGENT_STATUS, MANAGER_AGENTS,
    MANAGER_FORGET, MANAGER_HISTORY, MANAGER_JOB, MANAGER_JOBS, MANAGER_SHUTDOWN, MANAGER_STATUS,
};
pub use results::{
    join_lines, ExecResult, Output, ResultEnvelope, ResultFrame, ResultMsg, ServiceState,
    SignedResult, Status,
};
pub use sink::{Announce, AnnounceKind, SignedAnnounce, SinkMessage, ANNOUNCE_UUID};

use crate::security::Signed;
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
/// Largest result an agent may send to the sink, and a client read from the
/// result publisher: two outputs of `MAX_OUTPUT_LIMIT` as text, sealed
/// (base64, 4/3) and signed, with room to spare. An agent whose result would
/// be bigger (escaping: a control character is 6 bytes of JSON; 0.1's lists
/// of lines) cuts its outputs further until it fits ([`ResultMsg::shrink_output`]).
/// The sink's `ZMQ_MAXMSGSIZE`: a bigger frame is refused by libzmq, which
/// drops the connection, before anything is allocated for it.
pub const RESULT_LIMIT: usize = 32 * 1024 * 1024;
/// ZMQ_MAXMSGSIZE of the sockets that carry results (the sink, a client's
/// SUB): a result of RESULT_LIMIT plus what CURVE adds to a frame.
pub const RESULT_FRAME_LIMIT: i64 = RESULT_LIMIT as i64 + CURVE_SLACK;
/// What CURVE adds to a frame on the wire, with room: libzmq checks
/// ZMQ_MAXMSGSIZE against the encrypted frame and against the handshake's
/// commands (INITIATE carries the peer's metadata, a few hundred bytes).
pub const CURVE_SLACK: i64 = 4096;
/// Largest agent announcement (hello, heartbeat, bye) the sink decodes: a
/// node's names and topics, far below a result.
pub const ANNOUNCE_LIMIT: usize = REQUEST_LIMIT;
/// Most output an agent may be configured to keep per stream (`max_output`):
/// two such outputs of plain text, sealed, stay under RESULT_LIMIT.
pub const MAX_OUTPUT_LIMIT: u64 = 8 * 1024 * 1024;
/// Transport-level limit (ZMQ_MAXMSGSIZE) for sockets that read requests
/// (frontend, both mgmt sockets): a peer sending more is disconnected by
/// libzmq before we allocate it; smaller frames over `REQUEST_LIMIT` get an
/// error reply that says so.
pub const HARD_FRAME_LIMIT: i64 = 1024 * 1024;
/// ZMQ_MAXMSGSIZE of an agent's SUB (the backend's downstream): a dispatch
/// with room to spare for the manager's welcome and a 0.1 manager's frames.
pub const BACKEND_FRAME_LIMIT: i64 = 2 * DISPATCH_LIMIT as i64;
/// Longest subscription message (the subscribe byte and the topic) the
/// backend XPUB takes: a topic or private topic (node names are at most 255
/// bytes) or a signed presence token. libzmq keeps every subscription of a
/// connection in a trie of one node per byte, so a 1 MiB topic cost it about
/// 64 MiB; a longer one now drops the connection.
pub const BACKEND_SUBSCRIPTION_LIMIT: i64 = BACKEND_TOPIC_MAX as i64 + CURVE_SLACK;
/// Longest subscription message the result publisher takes: clients
/// subscribe to job ids (32 hex digits); room for longer ids of other clients.
pub const RESULT_SUBSCRIPTION_LIMIT: i64 = RESULT_TOPIC_MAX as i64 + CURVE_SLACK;
/// Longest subscription (subscribe byte and topic) the manager keeps on the
/// backend and on the result publisher: a connection that sends a longer one
/// is closed (libzmq's limits above leave room for CURVE's handshake).
pub const BACKEND_TOPIC_MAX: usize = 1024;
pub const RESULT_TOPIC_MAX: usize = 1 + 128;
/// Most subscriptions one connection may make to the backend (an agent
/// subscribes to its topics, its private topic and its presence token,
/// renewed now and then). A connection over it is closed (with the other
/// connections of its address): libzmq keeps every subscription in a trie it
/// walks whenever any connection closes, so a stranger's 100,000 topics
/// stalled the manager for minutes.
pub const BACKEND_SUBSCRIPTIONS_MAX: usize = 1024;
/// Most subscriptions one connection may make to the result publisher (our
/// client subscribes once per request on its own connection).
pub const RESULT_SUBSCRIPTIONS_MAX: usize = 256;
/// Most frames we accept in one multipart message; more is hostile.
pub const MAX_FRAMES: usize = 16;

/// The 0.1 topic every agent subscribes to.
pub const TOPIC_ANY: &str = "any";

/// The service commands every agent knows (0.1's five); others are an
/// agent's `custom_commands` and a client's `--custom`.
pub const STANDARD_COMMANDS: [&str; 5] = ["start", "stop", "restart", "reload", "status"];

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

/// Check size and UTF-8 of an untrusted frame.
pub fn checked_text(bytes: &[u8], limit: usize) -> Result<&str, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)
}

/// Decode one payload frame into a JSON object, enforcing the size limit.
/// The lenient decoders below start here: they read the 0.1 shapes field by
/// field, with an error that names the field.
pub fn decode_object(bytes: &[u8], limit: usize) -> Result<Map<String, Value>, DecodeError> {
    let text = checked_text(bytes, limit)?;
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

/// Take a required string field out of the map (no copy).
pub(crate) fn take_str(
    m: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, DecodeError> {
    match m.remove(field) {
        None | Some(Value::Null) => Err(DecodeError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// Take an optional string field out of the map.
pub(crate) fn take_opt_str(
    m: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    match m.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// Take the `auth` envelope out of a message: absent or null is `None`, a
/// malformed one is an error (never silently dropped).
pub(crate) fn take_auth(m: &mut Map<String, Value>) -> Result<Option<Signed>, DecodeError> {
    match m.remove("auth") {
        None | Some(Value::Null) => Ok(None),
        Some(a) => Signed::deserialize(a)
            .map(Some)
            .map_err(|_| DecodeError::WrongType {
                field: "auth",
                expected: "a signed envelope {key, body, sig}",
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

/// Why a service name or command word is refused before anything runs. The
/// texts are on the wire (agents' refusals, the manager's error replies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("service name is empty")]
    EmptyService,
    #[error("service name is {0} bytes long; the limit is 255")]
    ServiceTooLong(usize),
    #[error("service name {0:?} may not start with '-' or '.'")]
    ServiceLeadingDashOrDot(String),
    #[error("service name {name:?} contains {found:?}; only letters, digits and _ . @ : + - are allowed")]
    ServiceCharacter { name: String, found: char },
    #[error(
        "command {0:?} is not a plain command word such as start, stop, restart, reload or status"
    )]
    CommandWord(String),
}

impl NameError {
    /// One short word for counting refusals: `bad_name` or `bad_command`.
    pub fn reason(&self) -> &'static str {
        match self {
            NameError::CommandWord(_) => "bad_command",
            _ => "bad_name",
        }
    }
}

/// Whether a service name may be passed to a service manager.
/// A plain name: letters, digits and `_ . @ : + -`, not starting with `-` or `.`,
/// 1 to 255 bytes. That rules out paths (`../x`), options (`-h`) and shell
/// syntax (`a;b`), whatever the service manager would make of them.
pub fn check_service_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::EmptyService);
    }
    if name.len() > 255 {
        return Err(NameError::ServiceTooLong(name.len()));
    }
    if name.starts_with('-') || name.starts_with('.') {
        return Err(NameError::ServiceLeadingDashOrDot(name.to_owned()));
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.@:+-".contains(*c)))
    {
        return Err(NameError::ServiceCharacter {
            name: name.to_owned(),
            found,
        });
    }
    Ok(())
}

/// A command must be one plain lower-case word (`start`, `status`, `condrestart`);
/// which words an agent runs is its own allow-list.
pub fn check_command_word(cmd: &str) -> Result<(), NameError> {
    let ok = !cmd.is_empty()
        && cmd.len() <= 32
        && cmd
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !cmd.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError::CommandWord(cmd.to_owned()))
    }
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

/// Whether `s` is a job id as our managers make them: 32 lowercase hex digits.
pub fn valid_job_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Encode and decode again: the same message.
#[cfg(test)]
pub(crate) fn roundtrip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(v: &T) {
    let bytes = encode(v);
    let back: T = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(&back, v);
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The texts reach 0.1 clients and tests: typing them changed no byte.
    #[test]
    fn name_refusals_keep_their_texts() {
        let cases: [(&str, Result<(), NameError>, &str, &str); 5] = [
            ("", check_service_name(""), "service name is empty", "bad_name"),
            (
                "long",
                check_service_name(&"s".repeat(256)),
                "service name is 256 bytes long; the limit is 255",
                "bad_name",
            ),
            (
                "option",
                check_service_name("-h"),
                "service name \"-h\" may not start with '-' or '.'",
                "bad_name",
            ),
            (
                "shell",
                check_service_name("a;b"),
                "service name \"a;b\" contains ';'; only letters, digits and _ . @ : + - are allowed",
                "bad_name",
            ),
            (
                "command",
                check_command_word("STOP"),
                "command \"STOP\" is not a plain command word such as start, stop, restart, reload or status",
                "bad_command",
            ),
        ];
        for (name, got, text, reason) in cases {
            let e = got.expect_err(name);
            assert_eq!(e.to_string(), text, "{name}");
            assert_eq!(e.reason(), reason, "{name}");
        }
    }
}
