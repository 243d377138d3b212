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

/// How a socket that connects secures its connection.
#[derive(Clone)]
pub enum Wire {
    /// No encryption, no authentication (ZMTP NULL): 0.1 peers only, by the
    /// explicit choice `allow_unsigned` / `manager_key = "plaintext"`.
    Plain,
    /// CurveZMQ: we prove our key and talk only to the holder of `server`
    /// (the handshake fails against anyone else, so a fake manager gets nothing).
    Curve {
        public: [u8; 32],
        secret: [u8; 32],
        server: [u8; 32],
    },
}

impl std::fmt::Debug for Wire {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Wire::Plain => "Wire::Plain",
            Wire::Curve { .. } => "Wire::Curve",
        })
    }
}

impl Wire {
    /// CURVE to the holder of `server`, proving `ours`.
    pub fn curve(ours: &crate::security::KeyPair, server: &crate::security::PublicKey) -> Wire {
        Wire::Curve {
            public: ours.public().curve_key(),
            secret: ours.curve_secret(),
            server: server.curve_key(),
        }
    }

    /// Set the socket's mechanism; call before `connect`.
    pub fn apply(&self, s: &zmq::Socket) -> Result<()> {
        if let Wire::Curve {
            public,
            secret,
            server,
        } = self
        {
            s.set_curve_serverkey(server)?;
            s.set_curve_publickey(public)?;
            s.set_curve_secretkey(secret)?;
        }
        Ok(())
    }

    pub fn is_curve(&self) -> bool {
        matches!(self, Wire::Curve { .. })
    }
}

/// Make `s` a CURVE server holding `key`, whose peers the ZAP handler judges
/// under `domain`; call before `bind`, after the context's ZAP handler is bound
/// (without a handler libzmq would admit every key).
pub fn serve_curve(s: &zmq::Socket, key: &crate::security::KeyPair, domain: &str) -> Result<()> {
    s.set_curve_server(true)?;
    s.set_curve_secretkey(&key.curve_secret())?;
    s.set_zap_domain(domain)?;
    Ok(())
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

/// Who sent a message, as libzmq tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender {
    /// The ZAP `User-Id` of the connection (empty on plaintext sockets): who
    /// sent it, proved by the handshake.
    pub user: String,
    /// Its `Peer-Address`: the TCP peer's IP ("unknown" over inproc or ipc).
    pub address: String,
}

/// A message's sender and frames.
pub type Received = (Sender, Vec<Vec<u8>>);

/// As [`try_recv`], also telling who sent the message ([`Sender`]). Read from
/// the last frame: a ROUTER's routing-id frame carries no metadata.
pub fn try_recv_from(s: &zmq::Socket) -> Result<Option<Received>, zmq::Error> {
    let mut frames = Vec::new();
    let mut msg = zmq::Message::new();
    loop {
        match s.recv(&mut msg, zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) if frames.is_empty() => return Ok(None),
            Err(e) => return Err(e),
        }
        let more = msg.get_more();
        if !more {
            let sender = Sender {
                user: msg.gets("User-Id").unwrap_or_default().to_owned(),
                address: msg.gets("Peer-Address").unwrap_or("unknown").to_owned(),
            };
            if frames.len() < MAX_FRAMES + 1 {
                frames.push(msg.to_vec());
            }
            return Ok(Some((sender, frames)));
        }
        if frames.len() < MAX_FRAMES + 1 {
            frames.push(msg.to_vec());
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
/// manager, ends the peer's subscriptions. Not faster: each ping costs the
/// manager a timer armed and cancelled per connection (upstream libzmq
/// cancelled by a linear scan, half the manager's CPU with 10,000 agents; our
/// vendored libzmq indexes them, vendor/zeromq-src/PATCHES.md).
pub fn set_heartbeats(s: &zmq::Socket) -> Result<()> {
    s.set_heartbeat_ivl(5000)?;
    s.set_heartbeat_timeout(15000)?;
    s.set_heartbeat_ttl(15000)?;
    Ok(())
}

/// Set ZMQ_XPUB_MANUAL, which the zmq crate does not wrap: the manager then
/// decides what each subscriber is subscribed to (exact topic matching).
pub fn set_xpub_manual(s: &mut zmq::Socket) -> Result<()> {
    set_raw(
        s,
        zmq_sys::ZMQ_XPUB_MANUAL as i32,
        &1i32.to_ne_bytes(),
        "ZMQ_XPUB_MANUAL",
    )
}

/// Set ZMQ_XPUB_VERBOSER, which the zmq crate does not wrap: every
/// subscription and every unsubscription is passed up, so that the manager
/// counts each connection's live subscriptions exactly.
pub fn set_xpub_verboser(s: &mut zmq::Socket) -> Result<()> {
    set_raw(
        s,
        zmq_sys::ZMQ_XPUB_VERBOSER as i32,
        &1i32.to_ne_bytes(),
        "ZMQ_XPUB_VERBOSER",
    )
}

/// ZMQ_ROUTER_NOTIFY and its ZMQ_NOTIFY_DISCONNECT (draft API, not in zmq-sys).
const ZMQ_ROUTER_NOTIFY: i32 = 97;
const ZMQ_NOTIFY_DISCONNECT: i32 = 2;
/// ZMQ_HELLO_MSG (draft API, not in zmq-sys).
const ZMQ_HELLO_MSG: i32 = 110;
const ZMQ_IN_BATCH_SIZE: i32 = 101;
const ZMQ_OUT_BATCH_SIZE: i32 = 102;

/// A ROUTER that hands up `[routing id][empty frame]` when a peer's
/// connection ends: the manager's agent socket learns of a lost agent at
/// O(log n) cost (an XPUB walked its whole subscription trie per connection).
pub fn set_router_notify_disconnect(s: &mut zmq::Socket) -> Result<()> {
    let v = ZMQ_NOTIFY_DISCONNECT.to_ne_bytes();
    set_raw(s, ZMQ_ROUTER_NOTIFY, &v, "ZMQ_ROUTER_NOTIFY")
}

/// Send `hello` to every peer first thing on each new connection, by
/// libzmq: an agent then knows, with no monitor socket, that it reached
/// a manager (again) and must say who it is.
pub fn set_hello_msg(s: &mut zmq::Socket, hello: &[u8]) -> Result<()> {
    set_raw(s, ZMQ_HELLO_MSG, hello, "ZMQ_HELLO_MSG")
}

/// The bytes libzmq reads and writes per system call on each connection
/// (8 KiB each by default): buffers every connection holds, which a socket
/// of thousands of small-message peers can keep smaller.
pub fn set_batch_sizes(s: &mut zmq::Socket, bytes: i32) -> Result<()> {
    let v = bytes.to_ne_bytes();
    set_raw(s, ZMQ_IN_BATCH_SIZE, &v, "ZMQ_IN_BATCH_SIZE")?;
    set_raw(s, ZMQ_OUT_BATCH_SIZE, &v, "ZMQ_OUT_BATCH_SIZE")
}

/// zmq_setsockopt for the options the zmq crate does not wrap.
fn set_raw(s: &mut zmq::Socket, option: i32, value: &[u8], name: &str) -> Result<()> {
    // SAFETY: valid socket pointer; value is a live buffer of the given length.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            s.as_mut_ptr(),
            option as libc::c_int,
            value.as_ptr() as *const libc::c_void,
            value.len(),
        )
    };
    if rc != 0 {
        // SAFETY: reads libzmq's thread-local errno.
        let errno = unsafe { zmq_sys::zmq_errno() };
        bail!("cannot set {name}: {}", zmq::Error::from_raw(errno));
    }
    Ok(())
}

/// The connection a message came from, told apart from the others while it
/// lives: libzmq gives every connection one metadata object, shared by all its
/// messages, so the address of its `Peer-Address` text names the connection.
/// The message is kept so that the metadata (and the name) stays valid.
pub struct Peer {
    /// Names the connection (see above); never reused while this lives.
    pub conn: usize,
    /// The peer's IP address as libzmq reports it.
    pub address: String,
    /// Holds the connection's metadata (and so `conn`) alive.
    pub pin: zmq::Message,
}

/// A message of an XPUB's upstream: `[1|0][topic]` for a subscription.
pub struct Subscription {
    pub frame: Vec<u8>,
    /// The ZAP `User-Id` of its connection (empty on plaintext sockets).
    pub user: String,
    pub peer: Option<Peer>,
}

/// One message of an XPUB's upstream (a subscription), without blocking,
/// with the connection it came from when libzmq says (an unsubscription made
/// by libzmq itself, when a connection closes, comes from none). Further
/// frames of a multipart message are read and dropped. The `User-Id` is
/// read as [`try_recv_from`] does.
pub fn try_recv_subscription(s: &zmq::Socket) -> Result<Option<Subscription>, zmq::Error> {
    let mut msg = zmq::Message::new();
    match s.recv(&mut msg, zmq::DONTWAIT) {
        Ok(()) => {}
        Err(zmq::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut more = msg.get_more();
    while more {
        let mut rest = zmq::Message::new();
        s.recv(&mut rest, 0)?;
        more = rest.get_more();
    }
    let frame = msg.to_vec();
    let user = msg.gets("User-Id").unwrap_or_default().to_owned();
    let peer = msg
        .gets("Peer-Address")
        .map(|a| (a.as_ptr() as usize, a.to_owned()));
    Ok(Some(Subscription {
        frame,
        user,
        peer: peer.map(|(conn, address)| Peer {
            conn,
            address,
            pin: msg,
        }),
    }))
}

/// Close every TCP connection of this process whose local port is
/// `local_port` and whose peer is at `address`: the way to drop a peer that
/// libzmq offers no call for (an XPUB subscriber that floods subscriptions).
/// libzmq sees the connection end as if the peer had left. Returns how many
/// were closed. Linux (`/proc/self/fd`); elsewhere the first 4096 fds.
pub fn close_connections(local_port: u16, address: &str) -> usize {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => (0..4096).collect(),
    };
    let mut closed = 0;
    for fd in fds {
        let (Some(local), Some(peer)) = (sock_addr(fd, false), sock_addr(fd, true)) else {
            continue;
        };
        if local.port() == local_port && ip_text(&peer) == address {
            // SAFETY: shutdown(2) on an fd number of this process; it frees
            // nothing (libzmq still owns and closes the fd), and the address
            // check just above makes it this peer's connection.
            if unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } == 0 {
                closed += 1;
            }
        }
    }
    closed
}

/// The IP as libzmq's `Peer-Address` writes it.
fn ip_text(a: &std::net::SocketAddr) -> String {
    a.ip().to_string()
}

/// The local (`peer` false) or remote address of a TCP socket fd.
fn sock_addr(fd: i32, peer: bool) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let sa = &mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr;
    // SAFETY: the buffer and its length are valid; a non-socket fd fails.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, sa, &mut len)
        } else {
            libc::getsockname(fd, sa, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { *(sa as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { *(sa as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(a.sin6_port))))
        }
        _ => None,
    }
}

/// One request/reply round trip, retried Lazy-Pirate style: `retries` tries,
/// each waiting `timeout`, with a fresh REQ socket per try (0.1's behaviour).
/// On CURVE a failed handshake is told apart from silence, so that the error
/// says whether the key or the daemon is the problem.
pub fn request(
    ctx: &zmq::Context,
    endpoint: &str,
    wire: &Wire,
    payload: &[u8],
    timeout: Duration,
    retries: u32,
) -> Result<Vec<u8>> {
    let (reply, _) = round_trip(
        ctx,
        zmq::REQ,
        endpoint,
        wire,
        payload,
        timeout,
        retries,
        |_| Ok(()),
    )?;
    Ok(reply)
}

/// [`request`], keeping the connection for what follows the reply: over
/// CURVE on a DEALER, returned with the reply, on which the manager goes on
/// sending what the request asked for (one connection, one handshake);
/// over plaintext (0.1 peers) on a REQ, dropped (`None`). `prepare` sets
/// the kept socket's options before it connects.
pub fn request_keeping(
    ctx: &zmq::Context,
    endpoint: &str,
    wire: &Wire,
    payload: &[u8],
    timeout: Duration,
    retries: u32,
    prepare: impl Fn(&zmq::Socket) -> Result<()>,
) -> Result<(Vec<u8>, Option<zmq::Socket>)> {
    let kind = if wire.is_curve() {
        zmq::DEALER
    } else {
        zmq::REQ
    };
    let (reply, s) = round_trip(
        ctx, kind, endpoint, wire, payload, timeout, retries, prepare,
    )?;
    Ok((reply, (kind == zmq::DEALER).then_some(s)))
}

/// A REQ's round trip, on a REQ or on a DEALER that frames it as a REQ does
/// (an empty delimiter, then the payload; the reply is the frame after it).
#[allow(clippy::too_many_arguments)]
fn round_trip(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    endpoint: &str,
    wire: &Wire,
    payload: &[u8],
    timeout: Duration,
    retries: u32,
    prepare: impl Fn(&zmq::Socket) -> Result<()>,
) -> Result<(Vec<u8>, zmq::Socket)> {
    let tries = retries.max(1);
    let mut seen = Handshake::default();
    for n in 0..tries {
        let s = socket(ctx, kind)?;
        wire.apply(&s)?;
        prepare(&s)?;
        // Watched only once a try went unanswered: a monitor costs two more
        // sockets, which a client sending thousands of requests runs out of.
        let monitor = match wire {
            Wire::Curve { .. } if n > 0 => Some(monitor(ctx, &s, zmq::SocketEvent::ALL as i32)?),
            _ => None,
        };
        connect(&s, endpoint, "the -e endpoint")?;
        match kind {
            zmq::REQ => s.send(payload, 0)?,
            _ => s.send_multipart([&b""[..], payload], 0)?,
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut items = [s.as_poll_item(zmq::POLLIN)];
            if poll(&mut items, left.as_millis() as i64)? > 0 && items[0].is_readable() {
                if kind == zmq::REQ {
                    return Ok((s.recv_bytes(0)?, s));
                }
                // Each try is a fresh connection: its first message is the reply.
                if let Some(mut frames) = try_recv(&s)? {
                    if frames.len() == 2 && frames[0].is_empty() {
                        return Ok((frames.pop().expect("two frames"), s));
                    }
                }
            }
        }
        if let Some(m) = &monitor {
            seen.read(m);
        }
    }
    let tried = format!("{tries} tries of {} ms", timeout.as_millis());
    // The first try is not watched. Had it reached a manager that accepted it
    // in time but answered too late for it, the manager was up then, and the
    // next try (watched) would have completed its handshake; with one try the
    // client's deadline (`accept_by`) ends with that try.
    let reached = match wire {
        Wire::Curve { .. } => seen.succeeded,
        Wire::Plain => true,
    };
    let why = match seen {
        Handshake { refused: true, .. } => format!(
            "{endpoint} refused our key in the encrypted handshake ({tried}): it is not accepted \
             there (on the manager's host: service-mgr mgmt keys list, then accept it), rejected, \
             or not allowed on that socket"
        ),
        Handshake {
            connected: true,
            succeeded: false,
            ..
        } => format!(
            "reached {endpoint}, but the encrypted handshake never completed ({tried}): the daemon \
             there is stalled, or does not hold the key we pinned for it (another or a re-keyed \
             manager; or a 0.1 or allow_unsigned one, which needs the key setting `plaintext`)"
        ),
        _ if wire.is_curve() && tries == 1 => format!(
            "no answer from {endpoint} after {tried}; is the daemon running and is -e right? \
             (or it does not hold the key we pinned: try again with -r 2 to tell)"
        ),
        _ => {
            format!(
                "no answer from {endpoint} after {tried}; is the daemon running and is -e right?"
            )
        }
    };
    Err(NoAnswer { reached, why }.into())
}

/// No answer to a [`request`] within its tries: why, and whether the request
/// may have reached the daemon (over CURVE only once a watched handshake
/// completed; over plaintext nobody can tell, so it may have).
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
pub struct NoAnswer {
    pub reached: bool,
    pub(crate) why: String,
}

/// What a socket monitor saw of the handshakes of one connection attempt.
#[derive(Default)]
struct Handshake {
    connected: bool,
    succeeded: bool,
    refused: bool,
}

impl Handshake {
    fn read(&mut self, monitor: &zmq::Socket) {
        while let Ok(frames) = monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(event) = frames.first().and_then(|f| f.get(..2)) else {
                continue;
            };
            match u16::from_ne_bytes([event[0], event[1]]) as i32 {
                e if e == zmq::SocketEvent::CONNECTED as i32 => self.connected = true,
                e if e == zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32 => self.succeeded = true,
                e if e == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32 => self.refused = true,
                _ => {}
            }
        }
    }
}

/// Watches a connecting socket for handshakes that fail: libzmq does not
/// retry those (a refused key, a server holding another key), so the owner
/// reports it and reconnects by itself.
pub struct HandshakeWatch {
    monitor: zmq::Socket,
}

impl HandshakeWatch {
    pub fn new(ctx: &zmq::Context, s: &zmq::Socket) -> Result<HandshakeWatch> {
        let failures = (zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32)
            | (zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32)
            | (zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32);
        Ok(HandshakeWatch {
            monitor: monitor(ctx, s, failures)?,
        })
    }

    /// A failure seen since the last call: `Some(true)` when the server
    /// refused our key, `Some(false)` for any other failed handshake.
    pub fn failed(&self) -> Option<bool> {
        let mut seen = None;
        while let Ok(frames) = self.monitor.recv_multipart(zmq::DONTWAIT) {
            if let Some(e) = frames.first().and_then(|f| f.get(..2)) {
                let refused = u16::from_ne_bytes([e[0], e[1]]) as i32
                    == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32;
                seen = Some(seen.unwrap_or(false) || refused);
            }
        }
        seen
    }
}

/// A monitor of `s` that reports its connections closing (see [`saw_event`]).
pub fn watch_disconnects(ctx: &zmq::Context, s: &zmq::Socket) -> Result<zmq::Socket> {
    monitor(ctx, s, zmq::SocketEvent::DISCONNECTED as i32)
}

/// Whether a monitor reported anything since last asked (its queue is emptied).
pub fn saw_event(monitor: &zmq::Socket) -> bool {
    let mut any = false;
    while monitor.recv_multipart(zmq::DONTWAIT).is_ok() {
        any = true;
    }
    any
}

/// A PAIR socket receiving `s`'s connection `events`.
fn monitor(ctx: &zmq::Context, s: &zmq::Socket, events: i32) -> Result<zmq::Socket> {
    let endpoint = format!("inproc://monitor-{}", uuid::Uuid::new_v4().simple());
    s.monitor(&endpoint, events)?;
    let m = socket(ctx, zmq::PAIR)?;
    m.connect(&endpoint)?;
    Ok(m)
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
        let err = request(&ctx, &ep, &Wire::Plain, b"{}", Duration::from_millis(50), 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("after 2 tries"), "{err}");
    }
}
