//! ZAP (ZeroMQ RFC 27): who may complete a CURVE handshake with our sockets.
//!
//! libzmq asks the handler bound at [`ENDPOINT`] once per connection, before a
//! single message of that peer is read. The request names the socket's ZAP
//! domain (we set one per socket role) and, for CURVE, the peer's long-term
//! public key, which the handshake has already proved the peer holds. The
//! handler's `User-Id` is then attached by libzmq to every message of that
//! connection (`zmq::Message::gets("User-Id")`), so no peer can claim another's
//! key. Everything here is decoded strictly; anything odd is denied.

use std::fmt;

/// Where libzmq sends ZAP requests (fixed by RFC 27).
pub const ENDPOINT: &str = "inproc://zeromq.zap.01";
const VERSION: &[u8] = b"1.0";
/// Frames of a request before the credentials: version, request id, domain,
/// address, routing id, mechanism.
const HEAD_FRAMES: usize = 6;
/// Longest domain, address or user id we accept (libzmq's own are short).
const MAX_TEXT: usize = 255;

/// How the peer authenticated, with what it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    Null,
    Plain,
    /// The client's long-term CURVE public key (an X25519 key).
    Curve {
        client_key: [u8; 32],
    },
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mechanism::Null => "NULL",
            Mechanism::Plain => "PLAIN",
            Mechanism::Curve { .. } => "CURVE",
        })
    }
}

/// One ZAP request, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZapRequest {
    pub request_id: Vec<u8>,
    /// The `ZMQ_ZAP_DOMAIN` of the socket the peer connected to.
    pub domain: String,
    /// The peer's IP address, as libzmq reports it.
    pub address: String,
    pub mechanism: Mechanism,
}

/// Why a ZAP request was refused before any decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZapError {
    #[error("ZAP request has {0} frames")]
    FrameCount(usize),
    #[error("ZAP version is not 1.0")]
    Version,
    #[error("ZAP {0} is not short UTF-8 text")]
    Text(&'static str),
    #[error("unknown ZAP mechanism")]
    Mechanism,
    #[error("{mechanism} credentials have the wrong shape")]
    Credentials { mechanism: &'static str },
}

/// Decode a request as the handler's REP socket delivers it (no envelope).
pub fn decode(frames: &[Vec<u8>]) -> Result<ZapRequest, ZapError> {
    if frames.len() < HEAD_FRAMES {
        return Err(ZapError::FrameCount(frames.len()));
    }
    if frames[0] != VERSION {
        return Err(ZapError::Version);
    }
    let text = |i: usize, what: &'static str| {
        std::str::from_utf8(&frames[i])
            .ok()
            .filter(|s| s.len() <= MAX_TEXT)
            .map(str::to_owned)
            .ok_or(ZapError::Text(what))
    };
    let credentials = &frames[HEAD_FRAMES..];
    let mechanism = match frames[5].as_slice() {
        b"NULL" if credentials.is_empty() => Mechanism::Null,
        b"PLAIN" if credentials.len() == 2 => Mechanism::Plain,
        b"CURVE" => match credentials {
            [key] => Mechanism::Curve {
                client_key: key
                    .as_slice()
                    .try_into()
                    .map_err(|_| ZapError::Credentials { mechanism: "CURVE" })?,
            },
            _ => return Err(ZapError::Credentials { mechanism: "CURVE" }),
        },
        b"NULL" => return Err(ZapError::Credentials { mechanism: "NULL" }),
        b"PLAIN" => return Err(ZapError::Credentials { mechanism: "PLAIN" }),
        _ => return Err(ZapError::Mechanism),
    };
    Ok(ZapRequest {
        request_id: frames[1].clone(),
        domain: text(2, "domain")?,
        address: text(3, "address")?,
        mechanism,
    })
}

/// The handler's answer for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admit the peer; libzmq tags each of its messages with this `User-Id`.
    Allow { user_id: String },
    /// Refuse the handshake; the reason goes to the ZAP reply (and our log).
    Deny { reason: String },
}

/// The reply frames for `request_id` (RFC 27: 200 allows, 400 refuses).
pub fn reply(request_id: &[u8], verdict: &Verdict) -> Vec<Vec<u8>> {
    let (code, text, user_id): (&[u8], &str, &str) = match verdict {
        Verdict::Allow { user_id } => (b"200", "OK", user_id),
        Verdict::Deny { reason } => (b"400", reason, ""),
    };
    vec![
        VERSION.to_vec(),
        request_id.to_vec(),
        code.to_vec(),
        text.as_bytes().to_vec(),
        user_id.as_bytes().to_vec(),
        Vec::new(), // no metadata
    ]
}

/// The handler socket. Bind it before any CURVE server socket of the same
/// context binds, and answer it from the loop that owns it: libzmq holds each
/// new connection's handshake until the answer comes.
pub struct Handler {
    socket: zmq::Socket,
}

impl Handler {
    pub fn bind(ctx: &zmq::Context) -> zmq::Result<Handler> {
        let socket = ctx.socket(zmq::REP)?;
        socket.set_linger(0)?;
        socket.bind(ENDPOINT)?;
        Ok(Handler { socket })
    }

    /// For `zmq::poll` with the daemon's other sockets.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// Answer every request waiting now; `decide` sees each decoded request.
    /// A request that does not decode is denied with the decoder's reason.
    pub fn answer_waiting(
        &self,
        mut decide: impl FnMut(&ZapRequest) -> Verdict,
    ) -> zmq::Result<()> {
        loop {
            let frames = match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => frames,
                Err(zmq::Error::EAGAIN) => return Ok(()),
                Err(e) => return Err(e),
            };
            let (id, verdict) = match decode(&frames) {
                Ok(req) => (req.request_id.clone(), decide(&req)),
                Err(e) => {
                    let id = frames.get(1).cloned().unwrap_or_default();
                    (
                        id,
                        Verdict::Deny {
                            reason: e.to_string(),
                        },
                    )
                }
            };
            self.socket.send_multipart(reply(&id, &verdict), 0)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn request(mechanism: &[u8], credentials: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut frames: Vec<Vec<u8>> = [
            b"1.0".as_slice(),
            b"7",
            b"frontend",
            b"127.0.0.1",
            b"",
            mechanism,
        ]
        .iter()
        .map(|f| f.to_vec())
        .collect();
        frames.extend(credentials.iter().map(|c| c.to_vec()));
        frames
    }

    #[test]
    fn decodes_the_three_mechanisms_and_refuses_odd_shapes() {
        let key = [9u8; 32];
        let curve = decode(&request(b"CURVE", &[&key])).unwrap();
        assert_eq!(curve.mechanism, Mechanism::Curve { client_key: key });
        assert_eq!(
            (curve.domain.as_str(), curve.address.as_str()),
            ("frontend", "127.0.0.1")
        );
        assert_eq!(curve.request_id, b"7");
        assert_eq!(
            decode(&request(b"NULL", &[])).unwrap().mechanism,
            Mechanism::Null
        );
        assert_eq!(
            decode(&request(b"PLAIN", &[b"u", b"p"])).unwrap().mechanism,
            Mechanism::Plain
        );

        let cases: Vec<(Vec<Vec<u8>>, ZapError)> = vec![
            (
                request(b"CURVE", &[&[1u8; 31]]),
                ZapError::Credentials { mechanism: "CURVE" },
            ),
            (
                request(b"CURVE", &[&key, &key]),
                ZapError::Credentials { mechanism: "CURVE" },
            ),
            (
                request(b"CURVE", &[]),
                ZapError::Credentials { mechanism: "CURVE" },
            ),
            (
                request(b"NULL", &[b"x"]),
                ZapError::Credentials { mechanism: "NULL" },
            ),
            (request(b"GSSAPI", &[]), ZapError::Mechanism),
            (
                request(b"CURVE", &[&key])[..5].to_vec(),
                ZapError::FrameCount(5),
            ),
        ];
        for (frames, want) in cases {
            assert_eq!(decode(&frames), Err(want));
        }
        let mut v2 = request(b"NULL", &[]);
        v2[0] = b"2.0".to_vec();
        assert_eq!(decode(&v2), Err(ZapError::Version));
        let mut bad_domain = request(b"NULL", &[]);
        bad_domain[2] = vec![0xff];
        assert_eq!(decode(&bad_domain), Err(ZapError::Text("domain")));
    }

    #[test]
    fn replies_follow_rfc_27() {
        let ok = reply(
            b"7",
            &Verdict::Allow {
                user_id: "web1".into(),
            },
        );
        assert_eq!(ok, [&b"1.0"[..], b"7", b"200", b"OK", b"web1", b""]);
        let no = reply(
            b"7",
            &Verdict::Deny {
                reason: "unknown key".into(),
            },
        );
        assert_eq!(no, [&b"1.0"[..], b"7", b"400", b"unknown key", b"", b""]);
    }

    /// With a real CURVE server: the allowed key's messages carry its User-Id;
    /// a key the handler denies never gets a message through.
    #[test]
    fn only_allowed_keys_complete_the_handshake() {
        let ctx = zmq::Context::new();
        let handler = Handler::bind(&ctx).unwrap();
        let allowed = zmq::CurveKeyPair::new().unwrap();
        let stranger = zmq::CurveKeyPair::new().unwrap();
        let server_keys = zmq::CurveKeyPair::new().unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let allowed_key: [u8; 32] = allowed.public_key;
        let thread_stop = stop.clone();
        let zap = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                if handler.socket().poll(zmq::POLLIN, 20).unwrap() > 0 {
                    handler
                        .answer_waiting(|req| match req.mechanism {
                            Mechanism::Curve { client_key }
                                if client_key == allowed_key && req.domain == "sink" =>
                            {
                                Verdict::Allow {
                                    user_id: "web1".into(),
                                }
                            }
                            _ => Verdict::Deny {
                                reason: "unknown key".into(),
                            },
                        })
                        .unwrap();
                }
            }
        });

        let server = ctx.socket(zmq::PULL).unwrap();
        server.set_linger(0).unwrap();
        server.set_curve_server(true).unwrap();
        server.set_curve_secretkey(&server_keys.secret_key).unwrap();
        server.set_zap_domain("sink").unwrap();
        server.set_rcvtimeo(1000).unwrap();
        server.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = server.get_last_endpoint().unwrap().unwrap();
        let push_from = |keys: &zmq::CurveKeyPair| {
            let s = ctx.socket(zmq::PUSH).unwrap();
            s.set_linger(0).unwrap();
            s.set_curve_serverkey(&server_keys.public_key).unwrap();
            s.set_curve_publickey(&keys.public_key).unwrap();
            s.set_curve_secretkey(&keys.secret_key).unwrap();
            s.connect(&endpoint).unwrap();
            s
        };

        let bad = push_from(&stranger);
        bad.send("from a stranger", zmq::DONTWAIT).ok();
        let good = push_from(&allowed);
        good.send("from web1", 0).unwrap();
        let mut msg = zmq::Message::new();
        server.recv(&mut msg, 0).unwrap();
        assert_eq!(&msg[..], b"from web1");
        assert_eq!(msg.gets("User-Id"), Some("web1"));
        assert!(
            server.recv_bytes(0).is_err(),
            "the stranger's message got through"
        );
        stop.store(true, Ordering::Relaxed);
        zap.join().unwrap();
    }
}
