//! The backend: manager XPUB → agent SUB. Dispatched requests, the topic
//! frames (exact matching), the agent's presence subscription and private
//! topic (upstream), the welcome that tells an agent it is admitted, and
//! the acknowledgement of the results the manager has stored.

use super::{
    decode_object, take_auth, take_opt_str, take_str, DecodeError, DISPATCH_LIMIT,
    PROTOCOL_VERSION, TOPIC_TERMINATOR,
};
use crate::security::Signed;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
        Self::from_map(decode_object(bytes, DISPATCH_LIMIT).map_err(|e| (None, e))?)
    }

    /// The dispatch in an already decoded frame (fields are moved, not copied).
    fn from_map(mut m: Map<String, Value>) -> Result<Self, (Option<String>, DecodeError)> {
        let uuid = take_opt_str(&mut m, "uuid").map_err(|e| (None, e))?;
        let parsed = (|| {
            Ok::<_, DecodeError>(Dispatch {
                cmd: take_str(&mut m, "cmd")?,
                service: take_str(&mut m, "service")?,
                topic: take_opt_str(&mut m, "topic")?.unwrap_or_default(),
                uuid: uuid.clone().ok_or(DecodeError::Missing("uuid"))?,
                v: m.get("v").and_then(Value::as_u64),
                auth: take_auth(&mut m)?,
            })
        })();
        parsed.map_err(|e| (uuid, e))
    }
}

/// `{"type":"manager.welcome","v":2}`, on the agent's private topic each time
/// the manager grants it: the agent's presence token was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    #[serde(rename = "type")]
    pub kind: WelcomeKind,
    pub v: u64,
}

/// The one value of [`Welcome::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WelcomeKind {
    #[serde(rename = "manager.welcome")]
    Welcome,
}

impl Default for Welcome {
    fn default() -> Self {
        Welcome {
            kind: WelcomeKind::Welcome,
            v: PROTOCOL_VERSION,
        }
    }
}

/// `{"type":"manager.hello","v":2}`: the first message on every connection
/// to the manager's agent socket (secure mode), sent by libzmq itself
/// (ZMQ_HELLO_MSG), alone in its message. A DEALER has no other sign that it
/// reached a manager (again): the agent answers with its presence, `!acks`,
/// topics and hello announcement (docs/protocol.md §4.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerHello {
    #[serde(rename = "type")]
    pub kind: ManagerHelloKind,
    pub v: u64,
}

/// The one value of [`ManagerHello::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerHelloKind {
    #[serde(rename = "manager.hello")]
    Hello,
}

impl Default for ManagerHello {
    fn default() -> Self {
        ManagerHello {
            kind: ManagerHelloKind::Hello,
            v: PROTOCOL_VERSION,
        }
    }
}

impl ManagerHello {
    /// Whether a one-frame message is the manager's hello.
    pub fn is(frame: &[u8]) -> bool {
        decode_object(frame, 256)
            .is_ok_and(|m| matches!(m.get("type"), Some(Value::String(t)) if t == "manager.hello"))
    }
}

/// The manager has stored these results of the agent durably (its job store
/// synced them): the agent may forget them. On the agent's private topic,
/// only to agents that subscribed to [`ACKS_TOPIC`]. Jobs of one node (the
/// receiver): a node answers a job once, so its uuid names the result.
///
/// ```json
/// {"type":"manager.ack","v":2,"node":"web1","uuids":["f5697966...","0c1d..."]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(rename = "type")]
    pub kind: AckKind,
    pub v: u64,
    pub node: String,
    pub uuids: Vec<String>,
}

/// The one value of [`Ack::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckKind {
    #[serde(rename = "manager.ack")]
    Ack,
}

impl Ack {
    pub fn new(node: &str, uuids: Vec<String>) -> Ack {
        Ack {
            kind: AckKind::Ack,
            v: PROTOCOL_VERSION,
            node: node.to_owned(),
            uuids,
        }
    }
}

/// Most job ids in one [`Ack`]: 256 ids of up to 64 bytes stay far below
/// what an agent reads on the backend ([`DISPATCH_LIMIT`]).
pub const ACK_UUIDS_MAX: usize = 256;

/// The subscription by which an agent says it keeps its results until they
/// are acknowledged ([`Ack`]). Never published on; earlier agents do not
/// subscribe to it and are sent no acks (they would log each as a bad request).
pub const ACKS_TOPIC: &str = "!acks";

/// A payload frame on the backend, decoded once by the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendMessage {
    Welcome(Welcome),
    Ack(Ack),
    Dispatch(Dispatch),
}

impl BackendMessage {
    /// On error, the request's uuid when it had one, so that the agent can
    /// answer the request with the reason.
    pub fn decode(bytes: &[u8]) -> Result<Self, (Option<String>, DecodeError)> {
        let m = decode_object(bytes, DISPATCH_LIMIT).map_err(|e| (None, e))?;
        if matches!(m.get("type"), Some(Value::String(t)) if t == "manager.welcome") {
            let v = m
                .get("v")
                .and_then(Value::as_u64)
                .unwrap_or(PROTOCOL_VERSION);
            return Ok(BackendMessage::Welcome(Welcome {
                kind: WelcomeKind::Welcome,
                v,
            }));
        }
        if matches!(m.get("type"), Some(Value::String(t)) if t == "manager.ack") {
            return serde_json::from_value(Value::Object(m))
                .map(BackendMessage::Ack)
                .map_err(|e| {
                    (
                        None,
                        DecodeError::Invalid(format!("bad acknowledgement: {e}")),
                    )
                });
        }
        Dispatch::from_map(m).map(BackendMessage::Dispatch)
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

#[cfg(test)]
mod tests {
    use crate::protocol::*;

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

    #[test]
    fn backend_topics_match_exactly() {
        assert_eq!(backend_topic("web1"), b"web1\0");
        assert_eq!(parse_backend_topic(b"web1\0"), Some("web1"));
        assert_eq!(parse_backend_topic(b"web1"), Some("web1"));
        // The terminator is what makes `web1` not a prefix of `web10`.
        assert!(!backend_topic("web10").starts_with(&backend_topic("web1")));
    }
}
