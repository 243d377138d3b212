//! ZeroMQ plumbing shared by the roles: sockets with sane options, binds with
//! errors that say what to do, bounded receives, and the Lazy Pirate request.

use crate::protocol::MAX_FRAMES;
use anyhow::{anyhow, bail, Context as _, Result};
use std::time::{Duration, Instant};

/// Create a socket that never blocks context teardown (rust-zmq #382).
pub fn socket(ctx: &zmq::Context, kind: zmq::SocketType) -> Result<zmq::Socket> {
    let s = ctx
        .socket(kind)
        .with_context(|| format!("cannot create a {kind:?} socket"))?;
    s.set_linger(0)?;
    Ok(s)
}

/// Bind and return the endpoint actually bound (with the port when it was `*`).
/// `what` names the config key, so that the error tells the user what to change.
pub fn bind(s: &zmq::Socket, endpoint: &str, key: &str, program: &str) -> Result<String> {
    if let Err(e) = s.bind(endpoint) {
        let hint = match e {
            zmq::Error::EADDRINUSE => {
                format!("address in use; is another {program} running? set {key}")
            }
            zmq::Error::EADDRNOTAVAIL => {
                format!("no such local address; set {key} to an address of this host")
            }
            zmq::Error::EINVAL | zmq::Error::EPROTONOSUPPORT => {
                format!("not a valid endpoint (expected e.g. tcp://*:5500); set {key}")
            }
            zmq::Error::EACCES => {
                format!("permission denied; use a port above 1023 or run as root; set {key}")
            }
            other => format!("{other}; set {key}"),
        };
        bail!("cannot bind {endpoint}: {hint}");
    }
    last_endpoint(s)
}

pub fn last_endpoint(s: &zmq::Socket) -> Result<String> {
    s.get_last_endpoint()?
        .map_err(|_| anyhow!("bound endpoint is not UTF-8"))
}

pub fn connect(s: &zmq::Socket, endpoint: &str, key: &str) -> Result<()> {
    s.connect(endpoint)
        .map_err(|e| anyhow!("cannot connect to {endpoint}: {e}; set {key}"))
}

/// The port of a `tcp://host:port` endpoint.
pub fn endpoint_port(endpoint: &str) -> Option<u16> {
    endpoint.rsplit(':').next()?.parse().ok()
}

/// The host part of a `tcp://host:port` endpoint (brackets kept for IPv6).
pub fn endpoint_host(endpoint: &str) -> Option<&str> {
    let rest = endpoint.strip_prefix("tcp://")?;
    let (host, _) = rest.rsplit_once(':')?;
    Some(host)
}

/// Receive one multipart message without blocking; `None` if none is queued.
/// Messages with more than `MAX_FRAMES` frames are drained and reported as an error.
pub fn try_recv(s: &zmq::Socket) -> Result<Option<Vec<Vec<u8>>>, zmq::Error> {
    let mut frames = Vec::new();
    loop {
        match s.recv_bytes(zmq::DONTWAIT) {
            Ok(f) => {
                if frames.len() < MAX_FRAMES + 1 {
                    frames.push(f);
                }
            }
            Err(zmq::Error::EAGAIN) if frames.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        }
        if !s.get_rcvmore()? {
            return Ok(Some(frames));
        }
    }
}

/// `zmq::poll` that treats EINTR (a signal arrived) as "nothing ready":
/// the caller then checks its control flags (rust-zmq #191).
pub fn poll(items: &mut [zmq::PollItem], timeout_ms: i64) -> Result<i32> {
    match zmq::poll(items, timeout_ms) {
        Ok(n) => Ok(n),
        Err(zmq::Error::EINTR) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// ZMTP heartbeats: a peer that stops answering (a cut cable sends no FIN)
/// has its connection dropped within 20 s; libzmq then reconnects or, on the
/// manager, ends the peer's subscriptions. Not faster: each ping re-arms a
/// timer, which libzmq cancels by a linear scan; at 1 s with 1000 agents
/// that scan alone took 11 % of the manager's time (perf, BENCHMARKS.md).
pub fn set_heartbeats(s: &zmq::Socket) -> Result<()> {
    s.set_heartbeat_ivl(5000)?;
    s.set_heartbeat_timeout(15000)?;
    s.set_heartbeat_ttl(15000)?;
    Ok(())
}

/// Set ZMQ_XPUB_MANUAL, which the zmq crate does not wrap: the manager then
/// decides what each subscriber is subscribed to (exact topic matching).
pub fn set_xpub_manual(s: &mut zmq::Socket) -> Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: valid socket pointer; the option takes an int by pointer and length.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            s.as_mut_ptr(),
            zmq_sys::ZMQ_XPUB_MANUAL as libc::c_int,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>(),
        )
    };
    if rc != 0 {
        bail!("cannot set ZMQ_XPUB_MANUAL on the backend socket");
    }
    Ok(())
}

/// One request/reply round trip, retried Lazy-Pirate style: `retries` tries,
/// each waiting `timeout`, with a fresh REQ socket per try (0.1's behaviour).
pub fn request(
    ctx: &zmq::Context,
    endpoint: &str,
    payload: &[u8],
    timeout: Duration,
    retries: u32,
) -> Result<Vec<u8>> {
    let tries = retries.max(1);
    for _ in 0..tries {
        let s = socket(ctx, zmq::REQ)?;
        connect(&s, endpoint, "the -e endpoint")?;
        s.send(payload, 0)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut items = [s.as_poll_item(zmq::POLLIN)];
            if poll(&mut items, left.as_millis() as i64)? > 0 && items[0].is_readable() {
                return Ok(s.recv_bytes(0)?);
            }
        }
    }
    bail!(
        "no answer from {endpoint} after {tries} tries of {} ms; is the daemon running and is -e right?",
        timeout.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our libzmq is built with CURVE (vendor/zmq-sys): a real handshake on
    /// loopback succeeds with the right server key and fails with a wrong one.
    #[test]
    fn libzmq_has_curve() {
        assert_eq!(zmq::has("curve"), Some(true), "libzmq built without CURVE");
        let ctx = zmq::Context::new();
        let server_keys = zmq::CurveKeyPair::new().unwrap();
        let server = socket(&ctx, zmq::REP).unwrap();
        server.set_curve_server(true).unwrap();
        server.set_curve_secretkey(&server_keys.secret_key).unwrap();
        server.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = server.get_last_endpoint().unwrap().unwrap();
        let client_with = |server_public: &[u8]| {
            let keys = zmq::CurveKeyPair::new().unwrap();
            let client = socket(&ctx, zmq::REQ).unwrap();
            client.set_curve_serverkey(server_public).unwrap();
            client.set_curve_publickey(&keys.public_key).unwrap();
            client.set_curve_secretkey(&keys.secret_key).unwrap();
            client.set_rcvtimeo(500).unwrap();
            client.connect(&endpoint).unwrap();
            client
        };
        let good = client_with(&server_keys.public_key);
        good.send("ping", 0).unwrap();
        assert_eq!(server.recv_bytes(0).unwrap(), b"ping");
        server.send("pong", 0).unwrap();
        assert_eq!(good.recv_bytes(0).unwrap(), b"pong");
        // A client pinning another server key never completes the handshake.
        let wrong = client_with(&zmq::CurveKeyPair::new().unwrap().public_key);
        wrong.send("ping", 0).unwrap();
        assert!(wrong.recv_bytes(0).is_err());
    }

    #[test]
    fn endpoint_parts() {
        assert_eq!(endpoint_port("tcp://127.0.0.1:5500"), Some(5500));
        assert_eq!(endpoint_host("tcp://localhost:5500"), Some("localhost"));
        assert_eq!(endpoint_host("tcp://[::1]:5500"), Some("[::1]"));
        assert_eq!(endpoint_host("ipc:///tmp/x"), None);
    }

    #[test]
    fn bind_error_says_what_to_do() {
        let ctx = zmq::Context::new();
        let a = socket(&ctx, zmq::REP).unwrap();
        let ep = bind(&a, "tcp://127.0.0.1:*", "mgmt_endpoint", "service-mgrd").unwrap();
        let b = socket(&ctx, zmq::REP).unwrap();
        let err = bind(&b, &ep, "mgmt_endpoint", "service-mgrd")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("address in use") && err.contains("set mgmt_endpoint"),
            "{err}"
        );
    }

    #[test]
    fn request_gives_up_with_a_clear_error() {
        let ctx = zmq::Context::new();
        // A bound ROUTER that never answers.
        let r = socket(&ctx, zmq::ROUTER).unwrap();
        let ep = bind(&r, "tcp://127.0.0.1:*", "x", "t").unwrap();
        let err = request(&ctx, &ep, b"{}", Duration::from_millis(50), 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("after 2 tries"), "{err}");
    }
}
