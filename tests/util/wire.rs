//! Raw zmq on loopback: sockets the test binds or connects itself, one-shot
//! REQ round trips (management), and JSON frames.

use serde_json::Value;
use std::time::{Duration, Instant};

pub const LOOPBACK: &str = "tcp://127.0.0.1:*";

/// A socket of `kind` bound to 127.0.0.1 on an ephemeral port, and its endpoint.
pub fn bind_loopback(ctx: &zmq::Context, kind: zmq::SocketType) -> (zmq::Socket, String) {
    let s = ctx.socket(kind).unwrap();
    s.set_linger(0).unwrap();
    s.bind(LOOPBACK).unwrap();
    let ep = s.get_last_endpoint().unwrap().unwrap();
    assert!(ep.starts_with("tcp://127.0.0.1:"), "{ep}");
    // A port an earlier test's daemon had: not that daemon any more.
    super::keys::forget(&ep);
    (s, ep)
}

/// A socket of `kind` connected to `endpoint`, linger 0; over CURVE with the
/// key the harness registered for a daemon's endpoint (see `keys`).
pub fn connect(ctx: &zmq::Context, kind: zmq::SocketType, endpoint: &str) -> zmq::Socket {
    let s = ctx.socket(kind).unwrap();
    s.set_linger(0).unwrap();
    super::keys::secure(&s, endpoint);
    s.connect(endpoint).unwrap();
    s
}

/// A socket of `kind` connected over CURVE to `endpoint`, whose server holds
/// `server`, proving `ours` (a client or agent a test plays).
pub fn connect_curve(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    endpoint: &str,
    server: &service_mgr::security::PublicKey,
    ours: &service_mgr::security::KeyPair,
) -> zmq::Socket {
    let s = ctx.socket(kind).unwrap();
    s.set_linger(0).unwrap();
    s.set_curve_serverkey(&server.curve_key()).unwrap();
    s.set_curve_publickey(&ours.public().curve_key()).unwrap();
    s.set_curve_secretkey(&ours.curve_secret()).unwrap();
    s.connect(endpoint).unwrap();
    s
}

/// One multipart message within `ms` milliseconds, or `None`.
pub fn recv_within(s: &zmq::Socket, ms: i64) -> Option<Vec<Vec<u8>>> {
    let mut items = [s.as_poll_item(zmq::POLLIN)];
    let deadline = Instant::now() + Duration::from_millis(ms.max(0) as u64);
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as i64;
        match zmq::poll(&mut items, left) {
            Ok(n) if n > 0 => return Some(s.recv_multipart(0).unwrap()),
            Ok(_) => return None,
            Err(zmq::Error::EINTR) if left > 0 => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Send raw bytes on a REQ socket and return the reply (panics after 5 s).
pub fn req_raw(endpoint: &str, payload: &[u8]) -> Vec<u8> {
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::REQ).unwrap();
    s.set_linger(0).unwrap();
    super::keys::secure(&s, endpoint);
    s.connect(endpoint).unwrap();
    s.set_rcvtimeo(5000).unwrap();
    s.send(payload, 0).unwrap();
    s.recv_bytes(0)
        .unwrap_or_else(|e| panic!("no reply from {endpoint}: {e}"))
}

/// One raw management round trip over a REQ socket.
pub fn mgmt(endpoint: &str, cmd: &str) -> Value {
    mgmt_req(endpoint, serde_json::json!({ "cmd": cmd }))
}

/// A management request with arguments.
pub fn mgmt_req(endpoint: &str, req: Value) -> Value {
    let reply = req_raw(endpoint, req.to_string().as_bytes());
    serde_json::from_slice(&reply).unwrap()
}

/// Parse a frame as JSON, panicking with the frame's text if it is not.
pub fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Whether a reply is a 0.1 error reply `{"success": -1, "msg": "..."}`; its msg.
pub fn error_msg(reply: &Value) -> String {
    assert_eq!(reply["success"], -1, "not an error reply: {reply}");
    reply["msg"]
        .as_str()
        .unwrap_or_else(|| panic!("error reply without msg: {reply}"))
        .to_owned()
}
