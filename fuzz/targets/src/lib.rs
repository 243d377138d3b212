//! Fuzz targets: one function per decoder of untrusted bytes, each checking
//! what the decoder promises instead of only calling it.
//!
//! Every target takes arbitrary bytes, never returns an error and panics when
//! an invariant breaks, so that libFuzzer (`fuzz/`, nightly) and the stable
//! smoke test (`tests/fuzz_smoke.rs`) both report the input. [`all`] lists
//! them by the names of `fuzz/fuzz_targets/*.rs` and `fuzz/seeds/*/`. A stable
//! crate of its own (`fuzz/targets/`), beside the cargo-fuzz crate, so that
//! the shipped binary carries none of it.
//!
//! | target | decoder (who reads it) | invariants beyond "no panic" |
//! |---|---|---|
//! | `service_request` | [`ServiceRequest::decode`] (manager frontend) | size limit; decode(encode(r)) == r, for decoded and for built requests; a topic, or nodes/glob; the dispatch made of an accepted request decodes at the agent |
//! | `dispatch` | [`Dispatch::decode`] (agent backend) | round trip; an error carries the frame's uuid exactly when it has a string one |
//! | `sink_message` | [`SinkMessage::decode`] (manager sink) | announcements round trip; a result's uuid, node and status agree with the frame and with what the client reads from it |
//! | `mgmt_request` | [`MgmtRequest::decode`] (manager and agent mgmt) | round trip, for decoded and for built requests |
//! | `decode_object` | [`decode_object`] (every JSON frame) | `TooLarge` exactly over the limit; an object is valid UTF-8 and re-encodes to itself |
//! | `backend_topic` | [`parse_backend_topic`], [`valid_topic`] (agent, manager) | `backend_topic` inverts it; valid topics never reach a reserved `!` topic and never prefix-match each other |
//! | `presence` | [`Presence::parse`] (manager XPUB) | token round trip; instance without `|`; a signed token never verifies for a key the input does not hold |
//! | `names` | [`check_service_name`], [`check_command_word`], [`security::check_name`] | an accepted name is no path, option, blank or shell syntax, and within its length |
//! | `public_key` | `PublicKey::from_str`, [`parse_key_lines`] | a parsed key prints to the line it came from (same id) and parses back equal; one key per non-comment line |
//! | `identity` | [`KeyPair::from_toml`] (secret key files) | to_toml/from_toml round trip; its own signatures verify only for purposes its role may sign |
//! | `signed` | [`verify`], [`verify_announce`] on any [`Signed`] | never verifies for a key whose secret the input does not hold; our own signature over the same body verifies once, not for another purpose, not with a changed body |
//! | `sealed` | [`open`] on any [`Sealed`] | what opens, opens only unaltered; seal/open round trip of the input; another key cannot open it |
//! | `config` | [`config::parse`] for [`AgentConfig`] and [`ManagerConfig`] | a parsed config re-serialized as TOML parses to the same value; its policy compiles or fails without panic |
//! | `zap_request` | [`zap::decode`] (the ZAP handler of manager and agent, before any peer message is read) | accepted exactly when the frame count, version, mechanism with its credentials and short UTF-8 domain and address are right, each field taken from its frame; the reply is six frames echoing the request id, and a refusal's status text never echoes peer bytes |
//! | `result_frame` | result and reply frames the client reads ([`ResultMsg`], [`ResultEnvelope`], [`SignedResult`], [`Accepted`], [`MgmtReply`]) | serde round trip; [`client::node_of`] and [`client::status_of`] never panic |
//!
//! The keys the targets verify against are fixed (deterministic runs), and no
//! seed is signed or sealed with them except `fuzz/seeds/sealed/` (sealed, to
//! reach the success path of `open`): a fuzzer cannot forge a signature.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use service_mgr::client;
use service_mgr::config::{self, AgentConfig, ManagerConfig, Policy};
use service_mgr::protocol::{
    backend_topic, check_command_word, check_service_name, decode_object, encode,
    parse_backend_topic, valid_topic, Accepted, BackendMessage, DecodeError, Dispatch,
    FrontendReply, FrontendRequest, MgmtReply, MgmtRequest, Presence, ResultEnvelope, ResultFrame,
    ResultMsg, ServiceRequest, SignedResult, SinkMessage, Status, PRESENCE_PREFIX, PRIVATE_PREFIX,
    REQUEST_LIMIT, RESULT_LIMIT, TOPIC_ANY,
};
use service_mgr::security::{
    self, open, parse_key_lines, seal, sign_body, verify, verify_announce, KeyPair, PublicKey,
    Purpose, Role, Sealed, Signed, KEY_PREFIX,
};
use service_mgr::zap::{self, Mechanism, Verdict, ZapError};
use std::fmt::Debug;
use std::sync::OnceLock;

/// A fuzz target: arbitrary bytes in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by name; each name has `fuzz/fuzz_targets/<name>.rs` and `fuzz/seeds/<name>/`.
pub fn all() -> &'static [(&'static str, Target)] {
    &[
        ("service_request", service_request),
        ("dispatch", dispatch),
        ("sink_message", sink_message),
        ("mgmt_request", mgmt_request),
        ("decode_object", decode_object_target),
        ("backend_topic", backend_topic_target),
        ("presence", presence),
        ("names", names),
        ("public_key", public_key),
        ("identity", identity),
        ("signed", signed),
        ("sealed", sealed),
        ("config", config),
        ("result_frame", result_frame),
        ("zap_request", zap_request),
    ]
}

/// The fields of a structured input: the bytes split at 0xFF (which UTF-8
/// never contains), each read as lossy UTF-8. Missing fields are empty.
struct Fields(Vec<String>);

impl Fields {
    fn new(data: &[u8]) -> Fields {
        Fields(
            data.split(|&b| b == 0xff)
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect(),
        )
    }
    fn get(&self, i: usize) -> String {
        self.0.get(i).cloned().unwrap_or_default()
    }
    fn opt(&self, i: usize) -> Option<String> {
        self.0.get(i).filter(|s| !s.is_empty()).cloned()
    }
    fn num(&self, i: usize) -> Option<u64> {
        self.0.get(i).and_then(|s| s.parse().ok())
    }
    fn list(&self, i: usize) -> Option<Vec<String>> {
        self.0.get(i).map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }
    fn signed(&self, i: usize) -> Option<Signed> {
        self.opt(i).map(|key| Signed {
            key,
            body: self.get(i + 1),
            sig: self.get(i + 2),
        })
    }
}

/// Input bytes as a value of `T`: its JSON if the bytes are that, else built from [`Fields`].
fn json_or<T: DeserializeOwned>(data: &[u8], build: impl FnOnce(&Fields) -> T) -> T {
    serde_json::from_slice(data).unwrap_or_else(|_| build(&Fields::new(data)))
}

/// serde's own round trip: what we parsed, we write back unchanged.
fn serde_round_trip<T: Serialize + DeserializeOwned + Debug>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let back: T = serde_json::from_slice(&encode(&v)).expect("re-encoded value parses");
        let (a, b) = (to_value(&back), to_value(&v));
        assert!(
            same_json(&a, &b),
            "serde round trip of {}: {a:?} != {b:?}",
            std::any::type_name::<T>()
        );
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("protocol types always serialize")
}

/// JSON equality, floats within a few ULP: serde_json (without its
/// `float_roundtrip` feature) reads some decimals 1 ULP off, so a float does
/// not always survive a parse/print/parse. Harmless for us, since frames are
/// relayed as bytes and signatures cover the exact text.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// The size check comes first and alone decides `TooLarge`.
fn check_limit(data: &[u8], limit: usize, err: Option<&DecodeError>) {
    let too_large = matches!(err, Some(DecodeError::TooLarge { .. }));
    assert_eq!(
        too_large,
        data.len() > limit,
        "TooLarge iff over {limit} bytes"
    );
    if let Some(e) = err {
        let _ = e.to_string(); // the reply text must format
    }
}

/// A fixed identity whose secret no seed uses: a signature by it cannot be in the input.
fn fixed_identity(role: Role, name: &str, seed: u8) -> KeyPair {
    let secret = |k: u8| STANDARD.encode([seed.wrapping_mul(k); 32].map(|b| b ^ 0x5a));
    let text = format!(
        "role = \"{role}\"\nname = \"{name}\"\nsign_secret = \"{}\"\nbox_secret = \"{}\"\n",
        secret(3),
        secret(7)
    );
    KeyPair::from_toml(&text).expect("the fixed fuzz identity parses")
}

fn fuzz_client() -> &'static KeyPair {
    static ID: OnceLock<KeyPair> = OnceLock::new();
    ID.get_or_init(|| fixed_identity(Role::Client, "fuzz-client", 1))
}

fn fuzz_agent() -> &'static KeyPair {
    static ID: OnceLock<KeyPair> = OnceLock::new();
    ID.get_or_init(|| fixed_identity(Role::Agent, "fuzz-agent", 2))
}

/// `trusted` for [`verify`]: exactly this key, under its own id.
fn only(id: &KeyPair) -> impl Fn(&str) -> Option<PublicKey> + '_ {
    move |key_id| (key_id == id.key_id()).then(|| id.public().clone())
}

/// Which roles may sign for a purpose (the documented rule of [`verify`]).
fn may_sign(purpose: Purpose, role: Role) -> bool {
    matches!(
        (purpose, role),
        (Purpose::Request, Role::Client)
            | (Purpose::Result, Role::Agent)
            | (Purpose::Announce, Role::Client | Role::Agent)
    )
}

const PURPOSES: [Purpose; 3] = [Purpose::Request, Purpose::Result, Purpose::Announce];

/// No key of ours accepts a signature the input brings, whatever id it claims
/// (one purpose per role that may sign it: a signature check costs time).
fn assert_unforgeable(s: &Signed) {
    let cases = [
        (fuzz_client(), Purpose::Request),
        (fuzz_agent(), Purpose::Result),
        (fuzz_client(), Purpose::Announce),
    ];
    for (id, purpose) in cases {
        let lenient = |_: &str| Some(id.public().clone());
        assert!(verify(s, purpose, lenient).is_err(), "forged: {s:?}");
        let claimed = Signed {
            key: id.key_id(),
            ..s.clone()
        };
        assert!(
            verify(&claimed, purpose, only(id)).is_err(),
            "forged: {claimed:?}"
        );
    }
}

/// `ServiceRequest::decode`: the manager's frontend.
pub fn service_request(data: &[u8]) {
    let decoded = ServiceRequest::decode(data);
    check_limit(data, REQUEST_LIMIT, decoded.as_ref().err());
    // The manager's one decode of a frontend frame agrees with the request decoder.
    match FrontendRequest::decode(data) {
        Ok(FrontendRequest::Service(r)) => assert_eq!(Some(&*r), decoded.as_ref().ok()),
        Ok(FrontendRequest::Follow { .. }) => assert!(has_key(data, "job")),
        Err(e) => assert!(decoded.is_err() || has_key(data, "job"), "{e}"),
    }
    if let Ok(r) = &decoded {
        if !has_topic(data) {
            assert_eq!(r.topic, TOPIC_ANY, "a missing topic means `any`");
            assert!(
                r.nodes.is_some() || r.glob.is_some(),
                "only narrowed requests omit it"
            );
        }
        round_trip_request(r);
        // The manager accepts it and publishes it to agents as a Dispatch
        // (manager::dispatch): every agent must be able to read that.
        let d = Dispatch {
            cmd: r.cmd.clone(),
            service: r.service.clone(),
            topic: r.topic.clone(),
            uuid: "f569796669df4bf6982dd14c704900a0".into(),
            v: Some(service_mgr::protocol::PROTOCOL_VERSION),
            auth: r.auth.clone(),
        };
        let frame = encode(&d);
        if let Err((_, e)) = Dispatch::decode(&frame) {
            panic!("an accepted request makes a dispatch agents refuse ({e})");
        }
    }
    // The same fields built rather than parsed: whatever we send, we read back.
    let f = Fields::new(data);
    let built = ServiceRequest {
        cmd: f.get(0),
        service: f.get(1),
        topic: f.get(2),
        v: f.num(3),
        nodes: f.list(4).filter(|_| f.get(4) != "-"),
        glob: f.opt(5),
        dry_run: data.first().is_some_and(|b| b & 1 == 1),
        auth: f.signed(6),
        attach: data.first().is_some_and(|b| b & 2 == 2),
        resume: f.opt(7),
    };
    round_trip_request(&built);
}

fn has_key(data: &[u8], key: &str) -> bool {
    decode_object(data, REQUEST_LIMIT).is_ok_and(|m| m.contains_key(key))
}

fn has_topic(data: &[u8]) -> bool {
    decode_object(data, REQUEST_LIMIT).is_ok_and(|m| m.get("topic").is_some_and(Value::is_string))
}

fn round_trip_request(r: &ServiceRequest) {
    let bytes = encode(r);
    // Filling in a missing topic may take a request at the limit over it.
    if bytes.len() <= REQUEST_LIMIT {
        let back = ServiceRequest::decode(&bytes).expect("an encoded request decodes");
        assert_eq!(&back, r, "request round trip");
    }
}

/// `Dispatch::decode`: what an agent reads from the backend.
pub fn dispatch(data: &[u8]) {
    // The agent's one decode of a backend frame: a welcome, or this dispatch.
    if let Ok(BackendMessage::Dispatch(d)) = BackendMessage::decode(data) {
        assert_eq!(Dispatch::decode(data).ok(), Some(d));
    }
    let decoded = Dispatch::decode(data);
    check_limit(data, REQUEST_LIMIT, decoded.as_ref().err().map(|(_, e)| e));
    match &decoded {
        Ok(d) => {
            let back = Dispatch::decode(&encode(d)).expect("an encoded dispatch decodes");
            assert_eq!(&back, d, "dispatch round trip");
        }
        Err((uuid, _)) => {
            // The agent answers an error to this uuid: it must be the frame's own.
            let frame_uuid = decode_object(data, REQUEST_LIMIT)
                .ok()
                .and_then(|m| m.get("uuid").and_then(Value::as_str).map(str::to_owned));
            assert_eq!(uuid, &frame_uuid, "error uuid is the frame's uuid");
        }
    }
    let f = Fields::new(data);
    let built = Dispatch {
        cmd: f.get(0),
        service: f.get(1),
        topic: f.get(2),
        uuid: f.get(3),
        v: f.num(4),
        auth: f.signed(5),
    };
    let bytes = encode(&built);
    if bytes.len() <= REQUEST_LIMIT {
        assert_eq!(
            Dispatch::decode(&bytes).expect("built dispatch decodes"),
            built
        );
    }
}

/// `SinkMessage::decode`: results and announcements on the manager's sink.
pub fn sink_message(data: &[u8]) {
    let decoded = SinkMessage::decode(data);
    check_limit(data, RESULT_LIMIT, decoded.as_ref().err());
    let Ok(msg) = decoded else { return };
    let obj = decode_object(data, RESULT_LIMIT).expect("a decoded sink message is an object");
    match msg {
        SinkMessage::Announce(a) => {
            let kind = obj.get("type").and_then(Value::as_str).unwrap_or_default();
            assert!(kind.starts_with("agent."), "announcement of type {kind:?}");
            let back = SinkMessage::decode(&encode(&a)).expect("an encoded announcement decodes");
            assert_eq!(back, SinkMessage::Announce(a), "announcement round trip");
        }
        SinkMessage::Result {
            uuid,
            node,
            status,
            auth: _,
            body: _,
        } => {
            assert_eq!(obj.get("uuid").and_then(Value::as_str), Some(uuid.as_str()));
            // Manager and client must agree on who answered and how it went,
            // or the manager's accounting and the client's report differ.
            assert_eq!(node, client::node_of(&obj), "node as the client reads it");
            let shown = client::status_of(&obj);
            let valid_status = serde_json::from_value::<Status>(Value::String(shown.clone()));
            if valid_status.is_ok() {
                assert_eq!(status.as_str(), shown, "status as the client reads it");
            }
        }
    }
}

/// `MgmtRequest::decode`: the management sockets of manager and agent.
pub fn mgmt_request(data: &[u8]) {
    let decoded = MgmtRequest::decode(data);
    check_limit(data, REQUEST_LIMIT, decoded.as_ref().err());
    if let Ok(r) = &decoded {
        let back = MgmtRequest::decode(&encode(r)).expect("an encoded mgmt request decodes");
        assert_eq!(&back, r, "mgmt request round trip");
    }
    let f = Fields::new(data);
    let built = MgmtRequest {
        cmd: f.get(0),
        uuid: f.opt(1),
        limit: f.num(2).map(|n| n as usize),
        offset: f.num(4).map(|n| n as usize),
        node: f.opt(5),
        service: f.opt(6),
        since_ms: f.num(7),
        client: f.opt(8),
        auth: f.signed(3),
    };
    let bytes = encode(&built);
    if bytes.len() <= REQUEST_LIMIT {
        assert_eq!(
            MgmtRequest::decode(&bytes).expect("built mgmt decodes"),
            built
        );
    }
}

/// `decode_object` under a limit taken from the first two bytes.
pub fn decode_object_target(data: &[u8]) {
    let (limit, frame) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])) % 4096, rest),
        _ => (REQUEST_LIMIT, data),
    };
    let decoded = decode_object(frame, limit);
    check_limit(frame, limit, decoded.as_ref().err());
    match decoded {
        Ok(map) => {
            assert!(std::str::from_utf8(frame).is_ok());
            let back: Value = serde_json::from_slice(&encode(&map)).expect("object re-parses");
            let map = Value::Object(map);
            assert!(
                same_json(&back, &map),
                "object round trip: {back:?} != {map:?}"
            );
        }
        Err(DecodeError::NotUtf8) => assert!(std::str::from_utf8(frame).is_err()),
        Err(_) => {}
    }
}

/// `parse_backend_topic` and `valid_topic`: which requests an agent takes as its own.
pub fn backend_topic_target(data: &[u8]) {
    if let Some(t) = parse_backend_topic(data) {
        let framed = backend_topic(t);
        assert!(
            framed == data || framed[..framed.len() - 1] == *data,
            "backend_topic inverts parse_backend_topic"
        );
    }
    let f = Fields::new(data);
    let (a, b) = (f.get(0), f.get(1));
    for t in [&a, &b] {
        assert_eq!(parse_backend_topic(&backend_topic(t)), Some(t.as_str()));
        if valid_topic(t) {
            assert!(!t.is_empty() && t.len() <= 255 && !t.bytes().any(|c| c == 0 || c == b','));
            assert!(!t.starts_with(PRESENCE_PREFIX) && !t.starts_with(PRIVATE_PREFIX));
            assert!(!t.starts_with('!') && !t.starts_with('-') && !t.contains(char::is_whitespace));
        }
    }
    // The terminator makes prefix matching (zmq subscriptions) exact.
    if valid_topic(&a) && valid_topic(&b) && a != b {
        assert!(
            !backend_topic(&b).starts_with(&backend_topic(&a)),
            "{a:?} matches {b:?}"
        );
    }
}

/// `Presence::parse`: presence subscriptions the manager sees on its XPUB.
pub fn presence(data: &[u8]) {
    // The manager reads subscription frames lossily, as here.
    let topic = String::from_utf8_lossy(data);
    let Some(p) = Presence::parse(&topic) else {
        return;
    };
    assert!(topic.starts_with(PRESENCE_PREFIX));
    assert!(!p.instance.contains('|'), "instance {:?}", p.instance);
    let token = p.token();
    assert_eq!(
        Presence::parse(&token).as_ref(),
        Some(&p),
        "presence token round trip"
    );
    if let Some((ts, s)) = &p.signed {
        let text = Presence::signed_text(&p.instance, *ts);
        assert_eq!(serde_json::from_str::<Value>(&s.body).ok(), Some(text));
        // As the manager checks it: an announcement by the key it names.
        let me = fuzz_agent();
        let claimed = Signed {
            key: me.key_id(),
            ..s.clone()
        };
        assert!(
            verify(&claimed, Purpose::Announce, only(me)).is_err(),
            "forged: {claimed:?}"
        );
    }
}

/// Name checks that keep requests away from paths, options and shells.
pub fn names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    const UNSAFE: &[char] = &[
        '/', '\\', ';', '&', '|', '$', '`', '\'', '"', '<', '>', '(', ')', '*', '?', '[', ']', '{',
        '}', '~', '!', '#', '=', ',', '%',
    ];
    for name in text.split('\n').chain([text.as_ref()]) {
        if check_service_name(name).is_ok() {
            assert!(!name.is_empty() && name.len() <= 255);
            assert!(!name.starts_with(['-', '.']), "{name:?}");
            assert!(
                !name.contains(UNSAFE) && !name.contains(char::is_whitespace),
                "{name:?}"
            );
            assert!(
                name.is_ascii() && !name.contains(char::is_control),
                "{name:?}"
            );
        }
        if check_command_word(name).is_ok() {
            assert!(!name.is_empty() && name.len() <= 32 && !name.starts_with('-'));
            assert!(name
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_')));
        }
        if security::check_name(name).is_ok() {
            assert!(!name.is_empty() && name.len() <= 64 && !name.starts_with(['-', '.']));
            assert!(
                !name.contains(UNSAFE) && !name.contains(char::is_whitespace),
                "{name:?}"
            );
        } else {
            let _ = security::check_name(name).unwrap_err().to_string();
        }
    }
}

/// `PublicKey::from_str` and `parse_key_lines`: authorized-keys files, policy
/// entries, announcements and the key map the manager hands to clients.
pub fn public_key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(k) = text.parse::<PublicKey>() {
        check_key(&k, &text);
    }
    match parse_key_lines(&text) {
        Ok(keys) => {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .collect();
            assert_eq!(keys.len(), lines.len(), "one key per line");
            for (k, line) in keys.iter().zip(&lines) {
                check_key(k, line);
            }
            // Keys are stored and matched by id: one key, one id. `==` also
            // compares role and name, so give b's key a's role and name first.
            for a in &keys {
                for b in &keys {
                    let line = format!("{KEY_PREFIX} {} {} {}", a.role(), a.name(), b.key_id());
                    let b_as_a: PublicKey = line.parse().expect("a parsed key id parses again");
                    assert_eq!(
                        *a == b_as_a,
                        a.key_id() == b.key_id(),
                        "one key with two ids, or one id for two keys: {a} vs {b}"
                    );
                }
            }
        }
        Err(e) => assert!(e.to_string().contains("line "), "{e}"),
    }
}

fn check_key(k: &PublicKey, line: &str) {
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 4);
    // The id is the key's canonical text: the one it was parsed from.
    assert_eq!(
        k.key_id(),
        fields[3],
        "key id is the text it was parsed from"
    );
    assert_eq!(k.name(), fields[2]);
    assert_eq!(k.role().as_str(), fields[1]);
    assert!(security::check_name(k.name()).is_ok());
    let printed = k.to_string();
    assert_eq!(printed, fields.join(" "));
    assert_eq!(
        &printed.parse::<PublicKey>().expect("a printed key parses"),
        k
    );
    let fp = k.fingerprint();
    assert!(fp.len() == 16 && fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
}

/// `KeyPair::from_toml`: secret key files.
pub fn identity(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(id) = KeyPair::from_toml(&text) else {
        return;
    };
    let again = KeyPair::from_toml(&id.to_toml()).expect("a written secret file reads back");
    assert_eq!(again.public(), id.public());
    assert_eq!(
        &id.public()
            .to_string()
            .parse::<PublicKey>()
            .expect("its public line parses"),
        id.public()
    );
    let body = serde_json::json!({"fuzz": text});
    for purpose in PURPOSES {
        let s = sign_body(&id, purpose, &body);
        let ok = verify(&s, purpose, only(&id)).is_ok();
        assert_eq!(
            ok,
            may_sign(purpose, id.role()),
            "{} signs a {purpose}",
            id.role()
        );
    }
}

/// `verify` and `verify_announce` on any signed envelope.
pub fn signed(data: &[u8]) {
    let s: Signed = json_or(data, |f| Signed {
        key: f.get(0),
        body: f.get(1),
        sig: f.get(2),
    });
    assert_unforgeable(&s);
    if let Ok((pk, body)) = verify_announce(&s) {
        // Only a holder of the secret gets here; it must have announced itself.
        assert_eq!(pk.key_id(), s.key);
        let line = body
            .get("key")
            .and_then(Value::as_str)
            .expect("announced key line");
        assert_eq!(line.parse::<PublicKey>().ok().as_ref(), Some(&pk));
    }
    // The same body, signed by us: verifies once, for its purpose only, as signed.
    if let Ok(body) = serde_json::from_str::<Value>(&s.body) {
        let me = fuzz_client();
        let good = sign_body(me, Purpose::Request, &body);
        let (who, back) =
            verify(&good, Purpose::Request, only(me)).expect("own signature verifies");
        assert_eq!(&who, me.public());
        assert!(same_json(&back, &body), "signed body: {back:?} != {body:?}");
        assert!(
            verify(&good, Purpose::Announce, only(me)).is_err(),
            "purpose is signed"
        );
        let mut changed = good.clone();
        changed.body.push(' ');
        assert!(
            verify(&changed, Purpose::Request, only(me)).is_err(),
            "body is signed"
        );
        let by_agent = sign_body(fuzz_agent(), Purpose::Request, &body);
        assert!(
            verify(&by_agent, Purpose::Request, only(fuzz_agent())).is_err(),
            "role"
        );
    }
}

/// `open` on any sealed box, and seal/open of the input.
pub fn sealed(data: &[u8]) {
    let me = fuzz_client();
    let s: Sealed = json_or(data, |f| Sealed {
        epk: f.get(0),
        nonce: f.get(1),
        ct: f.get(2),
    });
    if open(me, &s).is_ok() {
        // Sealed to us for real (a seed): any change to the ciphertext is caught.
        let mut ct = STANDARD.decode(&s.ct).expect("opened ct is base64");
        let i = data.len() % ct.len();
        ct[i] ^= 1 << (data.len() % 8);
        let altered = Sealed {
            ct: STANDARD.encode(ct),
            ..s.clone()
        };
        assert!(open(me, &altered).is_err(), "altered ciphertext opened");
        assert!(open(fuzz_agent(), &s).is_err(), "opened by another key");
    }
    let mine = seal(me.public(), data);
    assert_eq!(open(me, &mine).expect("own seal opens"), data);
    assert!(open(fuzz_agent(), &mine).is_err(), "opened by another key");
}

/// `config::parse`: the manager's and the agent's config files, TOML or 0.1 INI.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(a) = config::parse::<AgentConfig>(&text) {
        if let Ok(policy) = Policy::new(&a.policy) {
            let _ = policy.decide(fuzz_client().public(), "status", "sshd");
        }
        config_round_trip(&a);
    }
    if let Ok(m) = config::parse::<ManagerConfig>(&text) {
        config_round_trip(&m);
    }
}

fn config_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(c: &T) {
    // TOML has no integers over i64::MAX, which the INI form can give: not written.
    let Ok(text) = toml::to_string(c) else { return };
    let back: T = config::parse(&text).unwrap_or_else(|e| panic!("{e:#} in\n{text}"));
    assert_eq!(&back, c, "config round trip through\n{text}");
}

/// The frames a client reads: the manager's answer, results, management replies.
pub fn result_frame(data: &[u8]) {
    serde_round_trip::<ResultMsg>(data);
    serde_round_trip::<ResultEnvelope>(data);
    serde_round_trip::<SignedResult>(data);
    serde_round_trip::<Accepted>(data);
    serde_round_trip::<MgmtReply>(data);
    // The client's one decode of a reply and of a result frame never panics.
    let _ = FrontendReply::decode(data);
    if let Ok(frame) = ResultFrame::decode(data) {
        let _ = frame.node();
    }
    if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(data) {
        let _ = (client::node_of(&obj), client::status_of(&obj));
    }
}

/// The frames of a ZAP request: the bytes split at 0xFF, with 0xFE escaping
/// the byte after it, so that a frame (a CURVE key) may hold any byte.
fn zap_frames(data: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = vec![Vec::new()];
    let mut bytes = data.iter();
    while let Some(&b) = bytes.next() {
        match b {
            0xff => frames.push(Vec::new()),
            0xfe => frames.last_mut().expect("never empty").extend(bytes.next()),
            _ => frames.last_mut().expect("never empty").push(b),
        }
    }
    frames
}

/// `zap::decode`: what libzmq hands the ZAP handler for each new connection
/// (the peer chose the credentials, and the address is its own).
pub fn zap_request(data: &[u8]) {
    let frames = zap_frames(data);
    check_zap(&frames);
    // The same fields in a well-formed CURVE request: accepted exactly when
    // domain and address are short UTF-8 text, whatever bytes the key holds.
    let mut built = frames.clone();
    built.resize(6, Vec::new());
    built[0] = b"1.0".to_vec();
    built[5] = b"CURVE".to_vec();
    let mut key = [0u8; 32];
    for (k, b) in key.iter_mut().zip(data.iter().rev()) {
        *k = *b;
    }
    built.truncate(6);
    built.push(key.to_vec());
    let text_ok = |f: &[u8]| f.len() <= 255 && std::str::from_utf8(f).is_ok();
    let req = zap::decode(&built);
    assert_eq!(
        req.is_ok(),
        text_ok(&built[2]) && text_ok(&built[3]),
        "{req:?}"
    );
    if let Ok(req) = req {
        assert_eq!(req.mechanism, Mechanism::Curve { client_key: key });
    }
    check_zap(&built);
}

fn check_zap(frames: &[Vec<u8>]) {
    let text_ok = |f: &[u8]| f.len() <= 255 && std::str::from_utf8(f).is_ok();
    let decoded = zap::decode(frames);
    if frames.len() < 6 {
        assert_eq!(decoded, Err(ZapError::FrameCount(frames.len())));
        return;
    }
    if frames[0] != b"1.0" {
        assert_eq!(decoded, Err(ZapError::Version));
        return;
    }
    let credentials = &frames[6..];
    let shape_ok = match frames[5].as_slice() {
        b"NULL" => credentials.is_empty(),
        b"PLAIN" => credentials.len() == 2,
        b"CURVE" => credentials.len() == 1 && credentials[0].len() == 32,
        _ => {
            assert_eq!(decoded, Err(ZapError::Mechanism));
            return;
        }
    };
    if !shape_ok {
        assert!(
            matches!(decoded, Err(ZapError::Credentials { .. })),
            "{decoded:?}"
        );
    } else if !text_ok(&frames[2]) {
        assert_eq!(decoded, Err(ZapError::Text("domain")));
    } else if !text_ok(&frames[3]) {
        assert_eq!(decoded, Err(ZapError::Text("address")));
    }
    match &decoded {
        Ok(req) => {
            assert!(shape_ok && text_ok(&frames[2]) && text_ok(&frames[3]));
            assert_eq!(req.request_id, frames[1], "request id");
            assert_eq!(req.domain.as_bytes(), frames[2].as_slice(), "domain");
            assert_eq!(req.address.as_bytes(), frames[3].as_slice(), "address");
            match &req.mechanism {
                Mechanism::Null => assert_eq!(frames[5], b"NULL"),
                Mechanism::Plain => assert_eq!(frames[5], b"PLAIN"),
                Mechanism::Curve { client_key } => {
                    assert_eq!(frames[5], b"CURVE");
                    assert_eq!(client_key.as_slice(), credentials[0].as_slice());
                }
            }
            assert_eq!(req.mechanism.to_string().as_bytes(), frames[5].as_slice());
            let ok = zap::reply(
                &req.request_id,
                &Verdict::Allow {
                    user_id: req.domain.clone(),
                },
            );
            assert_eq!(ok.len(), 6);
            assert_eq!(
                (&ok[0][..], &ok[1], &ok[2][..], &ok[4]),
                (&b"1.0"[..], &req.request_id, &b"200"[..], &frames[2]),
                "allow reply"
            );
        }
        Err(e) => {
            // As Handler::answer_waiting answers it: denied, under the request's id.
            let reason = e.to_string();
            assert!(
                reason.len() <= 64 && reason.is_ascii(),
                "the status text carries only our words: {reason:?}"
            );
            let id = frames.get(1).cloned().unwrap_or_default();
            let no = zap::reply(&id, &Verdict::Deny { reason });
            assert_eq!(no.len(), 6);
            assert_eq!(
                (&no[0][..], &no[1], &no[2][..], &no[4][..]),
                (&b"1.0"[..], &id, &b"400"[..], &b""[..]),
                "deny reply"
            );
        }
    }
}
