//! Golden fixtures: one file per message under `tests/fixtures/<socket>/`.
//! Ours must encode to exactly the file's bytes and decode back to the same
//! message through the decoder the receiving side uses; 0.1's (written by
//! the Python release, in its own spacing) must decode, and re-encode to the
//! same JSON. After a deliberate wire change, rewrite ours with
//! `FIXTURES_UPDATE=1 cargo test --test tests protocol::` and review the diff.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use service_mgr::agent::guard::result_frame;
use service_mgr::jobstore::{JobRecord, JobSummary, NodeResult};
use service_mgr::protocol::mgmt::{
    AgentInfo, AgentState, AgentStatus, Bound, ManagerStatus, SimulatedStatus,
};
use service_mgr::protocol::{
    self as p, Accepted, Announce, AnnounceKind, BackendMessage, Dispatch, ErrorReply, ExecResult,
    FollowRecord, FollowRequest, FrontendReply, FrontendRequest, MgmtBody, MgmtReply, MgmtRequest,
    Output, RequestBody, ResultEnvelope, ResultFrame, ResultMsg, ServiceRequest, ServiceState,
    SignedAnnounce, SinkMessage, Status, Welcome,
};
use service_mgr::security::{sign, sign_body, KeyPair, Purpose};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;

/// Fixed keys, so that signatures (ed25519 is deterministic) are fixed too.
/// Test keys only: they sign nothing but these fixtures.
const ALICE: &str = r#"role = "client"
name = "alice"
sign_secret = "yH3CYK32D2699gNvpbqr/6nSNImVUh7CazCTW+IAUEc="
box_secret = "+IBxHLtGDlcJPXBvS5Ii3I1z+XGuTRhdAsY6C1Tcfh8="
"#;
const WEB1: &str = r#"role = "agent"
name = "web1"
sign_secret = "gZ+VNItmAkrGnOAgd9PB725h3YkIPFgq4d3PGoHE4OE="
box_secret = "LI+faSW1s5MGJ80kW/qA/C6ZN449zpJTJOUBOlGpjoo="
"#;

const JOB: &str = "f569796669df4bf6982dd14c704900a0";
const REQUEST_ID: &str = "ec484b230aa8460cb1163acdea8dab61";
const TS: u64 = 1_795_833_619_081;

fn alice() -> KeyPair {
    KeyPair::from_toml(ALICE).unwrap()
}
fn web1() -> KeyPair {
    KeyPair::from_toml(WEB1).unwrap()
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Our message: encoded, it is the file byte for byte (plus a newline); the
/// file, decoded the way its receiver does, is the message.
fn ours<T: Serialize + PartialEq + Debug>(name: &str, msg: &T, decode: impl Fn(&[u8]) -> T) {
    let mut encoded = p::encode(msg);
    encoded.push(b'\n');
    if std::env::var_os("FIXTURES_UPDATE").is_some() {
        std::fs::write(path(name), &encoded).unwrap();
    }
    let golden = std::fs::read(path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&encoded),
        String::from_utf8_lossy(&golden),
        "{name}: the encoding changed; if on purpose, document it in docs/protocol.md"
    );
    assert_eq!(&decode(&golden), msg, "{name}: decoding");
}

/// A 0.1 message: it decodes, and what we would send back is the same JSON.
fn theirs<T: Serialize + DeserializeOwned>(name: &str, decode: impl Fn(&[u8]) -> T) -> T {
    let golden = std::fs::read(path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let msg = decode(&golden);
    let original: Value = serde_json::from_slice(&golden).unwrap();
    assert_eq!(serde_json::to_value(&msg).unwrap(), original, "{name}");
    msg
}

fn serde<T: DeserializeOwned>(b: &[u8]) -> T {
    serde_json::from_slice(b).unwrap()
}

fn request_of(b: &[u8]) -> ServiceRequest {
    match FrontendRequest::decode(b).unwrap() {
        FrontendRequest::Service(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn dispatch_of(b: &[u8]) -> Dispatch {
    match BackendMessage::decode(b).unwrap() {
        BackendMessage::Dispatch(d) => d,
        other => panic!("{other:?}"),
    }
}

fn announce_of(b: &[u8]) -> Announce {
    match SinkMessage::decode(b).unwrap() {
        SinkMessage::Announce(a) => a,
        other => panic!("{other:?}"),
    }
}

/// A result frame as the client reads it, and the routing fields the manager reads.
fn result_of(b: &[u8]) -> ResultMsg {
    let SinkMessage::Result {
        uuid, node, status, ..
    } = SinkMessage::decode(b).unwrap()
    else {
        panic!("not a result");
    };
    let r: ResultMsg = serde(b);
    assert_eq!(Some(uuid.as_str()), r.uuid.as_deref());
    assert_eq!(node.as_deref(), r.node());
    assert_eq!(status, r.effective_status());
    assert!(matches!(
        ResultFrame::decode(b).unwrap(),
        ResultFrame::Plain(_)
    ));
    r
}

fn signed_request() -> ServiceRequest {
    signed_request_until(None)
}

/// A signed request, with the client's deadline for an accept when given.
fn signed_request_until(accept_by: Option<u64>) -> ServiceRequest {
    let key = alice();
    let mut req = ServiceRequest::new("status", "nginx", "web");
    let mut body = RequestBody::for_request(&req, REQUEST_ID.into(), TS, key.public().to_string());
    body.accept_by = accept_by;
    req.auth = Some(sign_body(
        &key,
        Purpose::Request,
        &serde_json::to_value(&body).unwrap(),
    ));
    req
}

#[test]
fn frontend_messages() {
    theirs("frontend/request-0.1.json", request_of);
    ours(
        "frontend/request.json",
        &ServiceRequest::new("status", "sshd", "FreeBSD"),
        request_of,
    );
    let mut narrowed = ServiceRequest::new("status", "nginx", "any");
    narrowed.nodes = Some(vec!["web1".into(), "old1".into()]);
    narrowed.glob = Some("web*".into());
    narrowed.dry_run = true;
    ours("frontend/request-narrowed.json", &narrowed, request_of);
    let signed = signed_request();
    ours("frontend/request-signed.json", &signed, request_of);
    let body: RequestBody = RequestBody::from_signed(&signed.auth.as_ref().unwrap().body).unwrap();
    assert!(body.matches(&signed));
    // Typed signing (what our peers do) and signing the JSON value agree byte for byte.
    assert_eq!(Some(sign(&alice(), Purpose::Request, &body)), signed.auth);
    // Issue 13.3: the client's deadline for an accept is signed; a body without it
    // (older clients) has none, and the field keeps the order of the bytes signed.
    assert_eq!(body.accept_by, None);
    let mut until = signed_request_until(Some(TS + 3000));
    ours("frontend/request-deadline.json", &until, request_of);
    // A CURVE client asks for its results on its own connection (unsigned: it
    // says where the sender's own connection gets answers).
    until.attach = true;
    ours("frontend/request-attached.json", &until, request_of);
    // The same request through a second manager, taking over the first's job.
    until.resume = Some(JOB.into());
    ours("frontend/request-resume.json", &until, request_of);
    until.resume = None;
    until.attach = false;
    let body = RequestBody::from_signed(&until.auth.as_ref().unwrap().body).unwrap();
    assert_eq!(body.accept_by, Some(TS + 3000));
    assert!(body.matches(&until));
    assert!(until
        .auth
        .as_ref()
        .unwrap()
        .body
        .ends_with(&format!(r#""accept_by":{}}}"#, TS + 3000)));

    let accepted = |b: &[u8]| match FrontendReply::decode(b).unwrap() {
        FrontendReply::Accepted(a) => a,
        other => panic!("{other:?}"),
    };
    let old = theirs("frontend/accept-0.1.json", accepted);
    assert_eq!((old.port, old.expected), (5701, None));
    ours(
        "frontend/accept.json",
        &Accepted {
            uuid: JOB.into(),
            port: 41234,
            v: Some(2),
            expected: Some(vec!["web1".into(), "web2".into()]),
            unregistered: Some(0),
            agent_keys: Some(BTreeMap::from([(
                "web1".to_owned(),
                web1().public().to_string(),
            )])),
            pending_keys: None,
            near: None,
            attached: false,
            started_ms_ago: None,
        },
        accepted,
    );
    // The results of an attached request follow this reply on the connection.
    ours(
        "frontend/accept-attached.json",
        &Accepted {
            uuid: JOB.into(),
            port: 41234,
            v: Some(2),
            expected: Some(vec!["web1".into()]),
            unregistered: Some(0),
            agent_keys: Some(BTreeMap::from([(
                "web1".to_owned(),
                web1().public().to_string(),
            )])),
            pending_keys: None,
            near: None,
            attached: true,
            started_ms_ago: None,
        },
        accepted,
    );
    // Nothing matched and agent keys wait: the manager says why, the client prints it.
    ours(
        "frontend/accept-hints.json",
        &Accepted {
            uuid: JOB.into(),
            port: 41234,
            v: Some(2),
            expected: Some(Vec::new()),
            unregistered: Some(0),
            agent_keys: Some(BTreeMap::new()),
            pending_keys: Some(1),
            near: Some(vec!["web1".into(), "webfarm".into()]),
            attached: false,
            started_ms_ago: None,
        },
        accepted,
    );
    // Nothing matched a moment after the manager started: it says so.
    ours(
        "frontend/accept-starting.json",
        &Accepted {
            uuid: JOB.into(),
            port: 41234,
            v: Some(2),
            expected: Some(Vec::new()),
            unregistered: Some(0),
            agent_keys: Some(BTreeMap::new()),
            pending_keys: None,
            near: None,
            attached: false,
            started_ms_ago: Some(1200),
        },
        accepted,
    );
    let refused = |b: &[u8]| match FrontendReply::decode(b).unwrap() {
        FrontendReply::Refused(e) => e,
        other => panic!("{other:?}"),
    };
    theirs("frontend/error-0.1.json", refused);
    ours(
        "frontend/error.json",
        &ErrorReply::new("Missing message properties: topic"),
        refused,
    );
    ours(
        "frontend/follow.json",
        &FollowRequest::new(JOB),
        |b| match FrontendRequest::decode(b).unwrap() {
            FrontendRequest::Follow { job, .. } => FollowRequest::new(&job),
            other => panic!("{other:?}"),
        },
    );
    ours(
        "frontend/follow-attached.json",
        &FollowRequest {
            attach: true,
            ..FollowRequest::new(JOB)
        },
        |b| match FrontendRequest::decode(b).unwrap() {
            FrontendRequest::Follow { job, attach, .. } => FollowRequest {
                attach,
                ..FollowRequest::new(&job)
            },
            other => panic!("{other:?}"),
        },
    );
    ours(
        "frontend/follow-record.json",
        &FollowRecord {
            v: 2,
            uuid: JOB.into(),
            agent_keys: BTreeMap::from([("web1".to_owned(), web1().public().to_string())]),
            record: record(),
            next: None,
        },
        |b| match FrontendReply::decode(b).unwrap() {
            FrontendReply::Record(r) => *r,
            other => panic!("{other:?}"),
        },
    );
}

fn record() -> JobRecord {
    JobRecord {
        uuid: JOB.into(),
        created_ms: TS,
        request: json!({"cmd": "status", "service": "nginx", "topic": "web", "v": 2}),
        expected: vec!["web1".into(), "web2".into()],
        client: None,
        results: vec![
            NodeResult {
                node: "web1".into(),
                status: "failed".into(),
                received_ms: TS + 6,
                result: serde_json::to_value(our_result()).unwrap(),
            },
            NodeResult {
                node: "web2".into(),
                status: "no_response".into(),
                received_ms: TS + 600_000,
                result: Value::Null,
            },
        ],
        results_total: 2,
        finished_ms: Some(TS + 600_000),
        conflicts: 0,
    }
}

#[test]
fn backend_messages() {
    theirs("backend/dispatch-0.1.json", dispatch_of);
    let req = signed_request();
    ours(
        "backend/dispatch.json",
        &Dispatch {
            cmd: req.cmd,
            service: req.service,
            topic: req.topic,
            uuid: JOB.into(),
            v: Some(2),
            auth: req.auth,
        },
        dispatch_of,
    );
    ours(
        "backend/welcome.json",
        &Welcome::default(),
        |b| match BackendMessage::decode(b).unwrap() {
            BackendMessage::Welcome(w) => w,
            other => panic!("{other:?}"),
        },
    );
    // Secure agents' DEALER gets this from the manager's ROUTER on every
    // (re)connect (ZMQ_HELLO_MSG): the cue to introduce themselves.
    ours("backend/hello.json", &p::ManagerHello::default(), |b| {
        assert!(p::ManagerHello::is(b));
        serde(b)
    });
    assert!(!p::ManagerHello::is(
        b"{\"type\":\"manager.welcome\",\"v\":2}"
    ));
    ours(
        "backend/ack.json",
        &p::Ack::new(
            "web1",
            vec![JOB.into(), "0c1d5e2f9a8b4c7d8e6f5a4b3c2d1e0f".into()],
        ),
        |b| match BackendMessage::decode(b).unwrap() {
            BackendMessage::Ack(a) => a,
            other => panic!("{other:?}"),
        },
    );
    assert_eq!(p::backend_topic("web1"), b"web1\0");
    assert_eq!(p::private_topic("web1", "i1"), "!to/web1/i1");
}

fn hello(kind: AnnounceKind) -> Announce {
    Announce {
        kind,
        v: 2,
        node: "web1".into(),
        instance: "6f1c0e0b6a0b4e1f9d6c2b1f1c0e0b6a".into(),
        system: "Linux".into(),
        release: "6.1.0-18-amd64".into(),
        os_version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1".into(),
        topics: ["Linux", "any", "web", "web1"].map(String::from).to_vec(),
        agent_version: "0.2.0".into(),
        started_ms: TS,
        interval_ms: 2000,
        running: 0,
        auth: None,
        uuid: p::ANNOUNCE_UUID.into(),
    }
}

#[test]
fn sink_messages() {
    ours("sink/hello.json", &hello(AnnounceKind::Hello), announce_of);
    ours("sink/bye.json", &hello(AnnounceKind::Bye), announce_of);
    let key = web1();
    let mut beat = hello(AnnounceKind::Heartbeat);
    let body = SignedAnnounce {
        announce: beat.clone(),
        key: key.public().to_string(),
        ts: TS + 2000,
    };
    beat.auth = Some(sign_body(
        &key,
        Purpose::Announce,
        &serde_json::to_value(&body).unwrap(),
    ));
    ours("sink/heartbeat-signed.json", &beat, announce_of);
    let signed: SignedAnnounce = serde_json::from_str(&beat.auth.unwrap().body).unwrap();
    assert_eq!(signed, body);
}

fn our_result() -> ResultMsg {
    ResultMsg {
        msg: "Executed service status request".into(),
        success: None,
        result: Some(ExecResult {
            node: "web1".into(),
            service: "nginx".into(),
            returncode: 3,
            stdout: Output::Text("nginx is not running\n".into()),
            stderr: Output::default(),
            system: "Linux".into(),
            version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1".into(),
        }),
        uuid: Some(JOB.into()),
        v: Some(2),
        node: Some("web1".into()),
        status: Some(Status::Failed),
        cmd: Some("status".into()),
        duration_ms: Some(12),
        truncated: false,
        state: Some(ServiceState::Stopped),
    }
}

#[test]
fn result_messages() {
    let ok = theirs("results/result-0.1.json", result_of);
    assert_eq!(
        (ok.node(), ok.effective_status()),
        (Some("fbsd-dev"), Status::Ok)
    );
    let unknown = theirs("results/result-0.1-unrecognized.json", result_of);
    assert_eq!(unknown.effective_status(), Status::Failed);
    let lines = theirs("results/result-0.1-lines.json", result_of);
    assert_eq!(
        lines.result.unwrap().stdout.text(),
        "nginx is not running\n"
    );
    let err = theirs("results/error-0.1.json", result_of);
    assert_eq!(
        (err.node(), err.effective_status()),
        (Some("h1"), Status::Failed)
    );
    ours("results/result.json", &our_result(), result_of);
    ours(
        "results/no-response.json",
        &ResultMsg::no_response(JOB, "web2", "no answer: the agent's connection dropped"),
        result_of,
    );
    // A refusal of a signed request, signed in clear (nothing to seal it to):
    // the agent's own code builds it, and nothing in it is random.
    let refusal = ResultMsg {
        msg: "refused by policy: no rule allows alice to stop nginx".into(),
        success: Some(-1),
        result: None,
        uuid: Some(JOB.into()),
        v: Some(2),
        node: Some("web1".into()),
        status: Some(Status::Refused),
        cmd: Some("stop".into()),
        duration_ms: Some(0),
        truncated: false,
        state: None,
    };
    let frame = result_frame(&web1(), &refusal, None, Some(REQUEST_ID.into()), true);
    let envelope: ResultEnvelope = serde_json::from_slice(&frame).unwrap();
    ours(
        "results/signed-refusal.json",
        &envelope,
        |b| match ResultFrame::decode(b).unwrap() {
            ResultFrame::Signed(env) => env,
            other => panic!("{other:?}"),
        },
    );
    assert_eq!(p::encode(&envelope), frame, "the agent's frame, unchanged");
}

#[test]
fn mgmt_messages() {
    let decode = |b: &[u8]| MgmtRequest::decode(b).unwrap();
    theirs("mgmt/request-0.1.json", decode);
    let mut job = MgmtRequest::new(p::MANAGER_JOB);
    job.uuid = Some(JOB.into());
    ours("mgmt/job-request.json", &job, decode);
    let mut jobs = MgmtRequest::new(p::MANAGER_JOBS);
    jobs.limit = Some(20);
    ours("mgmt/jobs-request.json", &jobs, decode);
    let key = alice();
    let mut shutdown = MgmtRequest::new(p::AGENT_SHUTDOWN);
    let body = MgmtBody {
        cmd: p::AGENT_SHUTDOWN.into(),
        id: REQUEST_ID.into(),
        ts: TS,
        node: Some("web1".into()),
    };
    shutdown.auth = Some(sign_body(
        &key,
        Purpose::Request,
        &serde_json::to_value(&body).unwrap(),
    ));
    ours("mgmt/shutdown-signed.json", &shutdown, decode);
    assert_eq!(
        MgmtBody::from_signed(&shutdown.auth.unwrap().body).unwrap(),
        body
    );

    let reply = |b: &[u8]| serde::<MgmtReply>(b);
    theirs("mgmt/manager-status-0.1.json", reply);
    theirs("mgmt/agent-shutdown-0.1.json", reply);
    ours(
        "mgmt/error.json",
        &MgmtReply::error("Missing message properties: cmd"),
        reply,
    );
    let bound = Bound {
        frontend_endpoint: "tcp://0.0.0.0:5500".into(),
        backend_endpoint: "tcp://0.0.0.0:5600".into(),
        sink_endpoint: "tcp://0.0.0.0:5700".into(),
        mgmt_endpoint: "tcp://0.0.0.0:5800".into(),
        result_endpoint: "tcp://0.0.0.0:41234".into(),
        result_publisher_port: 41234,
        metrics_endpoint: None,
        manager_key: None,
    };
    let uname = [
        "Linux",
        "mgr",
        "6.1.0-18-amd64",
        "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1",
        "x86_64",
        "x86_64",
    ]
    .map(String::from);
    typed(
        "mgmt/manager-status.json",
        "Service Manager Status",
        &ManagerStatus {
            status: "running".into(),
            uname: uname.clone(),
            frontend_endpoint: "tcp://*:5500".into(),
            backend_endpoint: "tcp://*:5600".into(),
            sink_endpoint: "tcp://*:5700".into(),
            mgmt_endpoint: "tcp://*:5800".into(),
            result_publisher_port: 41234,
            bound,
            version: "0.2.0".into(),
            agents_up: 1,
            allow_unsigned: false,
            jobs_in_memory: 3,
            subscriptions: BTreeMap::from([("any".to_owned(), 1)]),
            job_store_warning: None,
            key_sync_warning: None,
        },
    );
    typed(
        "mgmt/agent-status.json",
        "Service Manager Agent Status",
        &AgentStatus {
            status: "running".into(),
            uname,
            manager_endpoint: "tcp://mgr:5600".into(),
            sink_endpoint: "tcp://mgr:5700".into(),
            mgmt_endpoint: "tcp://*:6000".into(),
            node: "web1".into(),
            topics: hello(AnnounceKind::Hello).topics,
            running: 0,
            instance: hello(AnnounceKind::Hello).instance,
            service_manager: Some("/usr/sbin/service".into()),
            version: "0.2.0".into(),
            unacknowledged: None,
            unacknowledged_dropped: None,
        },
    );
    typed(
        "mgmt/simulated-status.json",
        "Service Manager Agent Status",
        &SimulatedStatus {
            status: "running".into(),
            simulated: true,
            node: "sim*".into(),
            nodes: 1000,
            manager_endpoint: "tcp://mgr:5600".into(),
            sink_endpoint: "tcp://mgr:5700".into(),
            version: "0.2.0".into(),
        },
    );
    let h = hello(AnnounceKind::Hello);
    typed(
        "mgmt/agents.json",
        "Service Manager Agents",
        &vec![AgentInfo {
            node: h.node,
            instance: h.instance,
            system: h.system,
            release: h.release,
            os_version: h.os_version,
            topics: h.topics,
            agent_version: h.agent_version,
            started_ms: TS,
            last_seen_ms: TS + 4000,
            state: AgentState::Connecting,
            running: 0,
            key: Some(web1().public().to_string()),
            skew_s: None,
        }],
    );
    typed(
        "mgmt/jobs.json",
        "Service Manager Jobs",
        &vec![JobSummary {
            uuid: JOB.into(),
            created_ms: TS,
            request: record().request,
            expected_count: 2,
            answered_count: 1,
            status_counts: BTreeMap::from([
                ("failed".to_owned(), 1),
                ("no_response".to_owned(), 1),
            ]),
            finished_ms: Some(TS + 600_000),
            client: None,
        }],
    );
    typed("mgmt/job.json", "Service Manager Job", &record());
}

/// A management reply carrying a typed result: the reply is golden, and its
/// result decodes back into the type.
fn typed<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, msg: &str, result: &T) {
    let reply = MgmtReply::with(msg, result);
    ours(name, &reply, serde::<MgmtReply>);
    let back: T = serde_json::from_value(reply.result.unwrap()).unwrap();
    assert_eq!(&back, result, "{name}: typed result");
}
