//! The sink: agent PUSH → manager PULL. An agent's announcements (hello,
//! heartbeat, bye) and its results, read by the manager once into the few
//! fields it routes by; the result itself stays the bytes that arrived.

use super::results::Status;
use super::{checked_text, DecodeError, ANNOUNCE_LIMIT, RESULT_LIMIT};
use crate::security::Signed;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

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
    /// The agent's signature over a [`SignedAnnounce`] of this announcement.
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

/// What an agent signs for an announcement: the whole announcement (less
/// `auth`) plus its own public key line and the time, so that nobody can
/// rewrite a heartbeat into a goodbye or change its topics.
///
/// ```json
/// {"type": "agent.hello", "v": 2, "node": "web1", ..., "uuid": "!announce",
///  "key": "smgr1 agent web1 AAAA...", "ts": 1764294000000}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedAnnounce {
    #[serde(flatten)]
    pub announce: Announce,
    pub key: String,
    pub ts: u64,
}

/// A message on the sink: an agent's announcement or a result.
#[derive(Debug, Clone)]
pub enum SinkMessage {
    Announce(Announce),
    /// A result, kept as received (it is republished and stored unchanged),
    /// with the fields the manager routes by.
    Result {
        uuid: String,
        node: Option<String>,
        status: Status,
        /// The agent's signature (ours in secure mode), checked by manager and client.
        auth: Option<Signed>,
        /// The whole result object, as received (never re-encoded).
        body: Box<RawValue>,
    },
}

impl PartialEq for SinkMessage {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SinkMessage::Announce(a), SinkMessage::Announce(b)) => a == b,
            (
                SinkMessage::Result {
                    uuid,
                    node,
                    status,
                    auth,
                    body,
                },
                SinkMessage::Result {
                    uuid: u2,
                    node: n2,
                    status: s2,
                    auth: a2,
                    body: b2,
                },
            ) => (uuid, node, status, auth, body.get()) == (u2, n2, s2, a2, b2.get()),
            _ => false,
        }
    }
}

/// The routing fields of a sink frame. Everything else is read by [`Strict`]:
/// checked as strictly as a full decode (escapes, numbers), never stored.
/// No field is read into a `serde_json::Value`: a stranger's frame of nested
/// arrays in `node` or `auth` once took 1.5 GB for 40 MiB; now what is kept
/// is at most a copy of the frame's own text.
#[derive(Default)]
struct Probe<'a> {
    kind: Option<Field>,
    uuid: Option<Field>,
    node: Option<Field>,
    status: Option<Field>,
    /// The envelope's text, decoded once the frame is known to be a result.
    auth: Option<&'a RawValue>,
    result: Option<ResultProbe>,
}

/// `result.node` and `result.returncode` of a 0.1 result; anything that is
/// not an object reads as empty (0.1 leniency: the status then says failed).
#[derive(Default)]
struct ResultProbe {
    node: Option<Field>,
    returncode: Option<Field>,
}

/// A routing field as far as routing cares: a string, an integer, null, or
/// anything else (validated by [`Strict`] and dropped).
#[derive(Debug, PartialEq)]
enum Field {
    Null,
    Str(String),
    Int(i64),
    Other,
}

impl Field {
    fn into_str(self) -> Option<String> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_i64<E>(self, v: i64) -> Result<Field, E> {
                Ok(Field::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Field, E> {
                Ok(i64::try_from(v).map_or(Field::Other, Field::Int))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Field, E> {
                Ok(Field::Other)
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(Field::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Field, E> {
                Ok(Field::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Field, E> {
                Ok(Field::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field, A::Error> {
                StrictVisitor.visit_seq(seq)?;
                Ok(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field, A::Error> {
                StrictVisitor.visit_map(map)?;
                Ok(Field::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// Any JSON value, validated and dropped: strings are decoded (a lone
/// surrogate escape is refused) and numbers converted, as `Value` would, but
/// nothing is allocated for them.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_key::<Strict>()?.is_some() {
            map.next_value::<Strict>()?;
        }
        Ok(Strict)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Probe<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Probe<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe<'a>, A::Error> {
                // A repeated key keeps its last value, as a full decode does.
                let mut p = Probe::default();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    match &*k {
                        "type" => p.kind = Some(map.next_value()?),
                        "uuid" => p.uuid = Some(map.next_value()?),
                        "node" => p.node = Some(map.next_value()?),
                        "status" => p.status = Some(map.next_value()?),
                        "auth" => p.auth = Some(map.next_value()?),
                        "result" => p.result = Some(map.next_value()?),
                        _ => {
                            map.next_value::<Strict>()?;
                        }
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for ResultProbe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ResultProbe;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ResultProbe, A::Error> {
                let mut p = ResultProbe::default();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    match &*k {
                        "node" => p.node = Some(map.next_value()?),
                        "returncode" => p.returncode = Some(map.next_value()?),
                        _ => {
                            map.next_value::<Strict>()?;
                        }
                    }
                }
                Ok(p)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ResultProbe, A::Error> {
                StrictVisitor.visit_seq(seq)?;
                Ok(ResultProbe::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<ResultProbe, E> {
                Ok(ResultProbe::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<ResultProbe, E> {
                Ok(ResultProbe::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<ResultProbe, E> {
                Ok(ResultProbe::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<ResultProbe, E> {
                Ok(ResultProbe::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<ResultProbe, E> {
                Ok(ResultProbe::default())
            }
            fn visit_unit<E>(self) -> Result<ResultProbe, E> {
                Ok(ResultProbe::default())
            }
        }
        d.deserialize_any(V)
    }
}

impl SinkMessage {
    pub fn decode(bytes: &[u8]) -> Result<SinkMessage, DecodeError> {
        let text = checked_text(bytes, RESULT_LIMIT)?;
        // One strict pass reads the routing fields; the result itself is kept as text.
        let probe: Probe = serde_json::from_str(text).map_err(|e| refused(text, e))?;
        match probe.kind {
            None | Some(Field::Null) => {}
            Some(Field::Str(kind)) if kind.starts_with("agent.") => {
                // An announcement is a few names and topics: a big one is not decoded.
                checked_text(bytes, ANNOUNCE_LIMIT)?;
                let a: Announce = serde_json::from_str(text)
                    .map_err(|e| DecodeError::Invalid(format!("bad agent announcement: {e}")))?;
                return Ok(SinkMessage::Announce(a));
            }
            Some(Field::Str(_)) => {}
            Some(_) => {
                return Err(DecodeError::WrongType {
                    field: "type",
                    expected: "a string",
                })
            }
        }
        let uuid = match probe.uuid {
            None | Some(Field::Null) => return Err(DecodeError::Missing("uuid")),
            Some(Field::Str(s)) => s,
            Some(_) => {
                return Err(DecodeError::WrongType {
                    field: "uuid",
                    expected: "a string",
                })
            }
        };
        let result = probe.result.unwrap_or_default();
        // A top-level `node` wins, even when it is not a string (then: none).
        let node = probe.node.or(result.node).and_then(Field::into_str);
        // The status the way ResultMsg derives it, without requiring its full shape.
        let status = match probe.status.and_then(Field::into_str).map(|s| {
            Status::deserialize(serde::de::value::StrDeserializer::<serde_json::Error>::new(
                &s,
            ))
        }) {
            Some(Ok(s)) => s,
            _ => match result.returncode {
                Some(Field::Int(0)) => Status::Ok,
                _ => Status::Failed,
            },
        };
        let auth = match probe.auth {
            None => None,
            Some(a) if a.get() == "null" => None,
            Some(a) => Some(serde_json::from_str::<Signed>(a.get()).map_err(|_| {
                DecodeError::WrongType {
                    field: "auth",
                    expected: "a signed envelope {key, body, sig}",
                }
            })?),
        };
        Ok(SinkMessage::Result {
            uuid,
            node,
            status,
            auth,
            body: RawValue::from_string(text.to_owned())
                .map_err(|e| DecodeError::BadJson(e.to_string()))?,
        })
    }
}

/// The error for a frame the probe refused: bad JSON, or JSON that is not an object.
fn refused(text: &str, e: serde_json::Error) -> DecodeError {
    let kind = match text.trim_start().as_bytes().first() {
        _ if e.is_syntax() || e.is_eof() => return DecodeError::BadJson(e.to_string()),
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => return DecodeError::BadJson(e.to_string()),
    };
    DecodeError::NotObject(kind)
}

#[cfg(test)]
mod tests {
    use crate::protocol::*;

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
        match SinkMessage::decode(include_bytes!(
            "../../tests/fixtures/results/result-0.1.json"
        ))
        .unwrap()
        {
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

    /// Routing fields that are not what they should be are read and dropped,
    /// never kept as JSON values; the envelope is read from its own text.
    #[test]
    fn odd_routing_fields_are_dropped_not_kept() {
        let nested = format!(
            r#"{{"uuid": "u", "node": [{}0], "status": {{"a": [1]}}}}"#,
            "[0],".repeat(1000)
        );
        match SinkMessage::decode(nested.as_bytes()).unwrap() {
            SinkMessage::Result {
                node, status, auth, ..
            } => {
                assert_eq!((node, status, auth), (None, Status::Failed, None));
            }
            other => panic!("{other:?}"),
        }
        let ok = br#"{"uuid": "u", "result": {"node": "n", "returncode": 0}, "auth": {"key": "k", "body": "{}", "sig": "s"}}"#;
        match SinkMessage::decode(ok).unwrap() {
            SinkMessage::Result {
                node, status, auth, ..
            } => {
                assert_eq!(node.as_deref(), Some("n"));
                assert_eq!(status, Status::Ok);
                assert_eq!(auth.unwrap().body, "{}");
            }
            other => panic!("{other:?}"),
        }
        assert!(SinkMessage::decode(br#"{"uuid": "u", "auth": [1]}"#)
            .unwrap_err()
            .to_string()
            .contains("auth"));
        // An announcement is small; a big one is not decoded.
        let big = format!(
            r#"{{"type": "agent.hello", "topics": ["{}"]}}"#,
            "t".repeat(ANNOUNCE_LIMIT)
        );
        assert!(matches!(
            SinkMessage::decode(big.as_bytes()),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
