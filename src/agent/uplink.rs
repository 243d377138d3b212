//! The agent's connection(s) to one manager (an agent with several managers
//! holds one `Uplink` for each).
//!
//! - **Secure (CURVE, a manager of ours):** one DEALER on the manager's agent
//!   socket (`manager_endpoint`) carries everything: requests, acks and the
//!   welcome in; presence, announcements and results out. The manager's
//!   `manager.hello` arrives first on every (re)connection, and we answer it
//!   with who we are ([`super::Agent::introduce`]). One connection and one
//!   handshake per agent, and a manager that sees it close knows at once.
//! - **Plaintext (a 0.1 manager, or ours with `allow_unsigned`):** 0.1's pair,
//!   a SUB on `manager_endpoint` for requests and a PUSH on `sink_endpoint`.
//!
//! A subscription on the DEALER is a message `[1|0][topic]`, the very frame an
//! XPUB hands up, so the manager reads both the same way.

use crate::protocol as p;
use crate::transport::{self, Wire};
use anyhow::Result;

pub(super) enum Uplink {
    Link {
        dealer: zmq::Socket,
        endpoint: String,
    },
    Pair {
        sub: zmq::Socket,
        push: zmq::Socket,
        endpoint: String,
        sink: String,
    },
}

impl Uplink {
    /// Connect to the manager at `endpoint` (and `sink`, plaintext) with
    /// `wire`; `linger_ms` for results queued at stop.
    pub fn connect(
        ctx: &zmq::Context,
        endpoint: &str,
        sink: &str,
        wire: &Wire,
        linger_ms: i32,
    ) -> Result<Uplink> {
        let inbound = |kind| -> Result<zmq::Socket> {
            let s = transport::socket(ctx, kind)?;
            wire.apply(&s)?;
            // Not admitted yet (key pending): libzmq retries the handshake, backing off.
            s.set_reconnect_ivl_max(5000)?;
            s.set_maxmsgsize(p::BACKEND_FRAME_LIMIT)?;
            transport::set_heartbeats(&s)?;
            Ok(s)
        };
        let outbound = |s: &zmq::Socket| -> Result<()> {
            s.set_sndhwm(100_000)?;
            // Results queued when we stop still reach the manager.
            s.set_linger(linger_ms)?;
            Ok(())
        };
        match wire {
            Wire::Curve { .. } => {
                let dealer = inbound(zmq::DEALER)?;
                outbound(&dealer)?;
                transport::connect(&dealer, endpoint, "manager_endpoint")?;
                Ok(Uplink::Link {
                    dealer,
                    endpoint: endpoint.to_owned(),
                })
            }
            Wire::Plain => {
                let sub = inbound(zmq::SUB)?;
                let push = transport::socket(ctx, zmq::PUSH)?;
                wire.apply(&push)?;
                push.set_reconnect_ivl_max(5000)?;
                outbound(&push)?;
                transport::set_heartbeats(&push)?;
                Ok(Uplink::Pair {
                    sub,
                    push,
                    endpoint: endpoint.to_owned(),
                    sink: sink.to_owned(),
                })
            }
        }
    }

    /// Connect the plaintext pair once its subscriptions are set (a SUB
    /// sends them on connecting); the DEALER is connected already.
    pub fn start(&self) -> Result<()> {
        if let Uplink::Pair {
            sub,
            push,
            endpoint,
            sink,
        } = self
        {
            transport::connect(sub, endpoint, "manager_endpoint")?;
            transport::connect(push, sink, "sink_endpoint")?;
        }
        Ok(())
    }

    /// The manager's endpoint, as configured.
    pub fn endpoint(&self) -> &str {
        match self {
            Uplink::Link { endpoint, .. } | Uplink::Pair { endpoint, .. } => endpoint,
        }
    }

    /// The manager's sink (plaintext only).
    pub fn sink(&self) -> Option<&str> {
        match self {
            Uplink::Link { .. } => None,
            Uplink::Pair { sink, .. } => Some(sink),
        }
    }

    /// Where requests come in (to poll and read).
    pub fn inbound(&self) -> &zmq::Socket {
        match self {
            Uplink::Link { dealer, .. } => dealer,
            Uplink::Pair { sub, .. } => sub,
        }
    }

    /// Queue one frame for the manager (announcement or result).
    pub fn send(&self, frame: impl Into<zmq::Message>) -> Result<(), zmq::Error> {
        match self {
            Uplink::Link { dealer, .. } => dealer.send(frame, zmq::DONTWAIT),
            Uplink::Pair { push, .. } => push.send(frame, zmq::DONTWAIT),
        }
    }

    pub fn subscribe(&self, topic: &str) -> Result<(), zmq::Error> {
        match self {
            Uplink::Link { dealer, .. } => dealer.send(subscription(1, topic), zmq::DONTWAIT),
            Uplink::Pair { sub, .. } => sub.set_subscribe(topic.as_bytes()),
        }
    }

    pub fn unsubscribe(&self, topic: &str) -> Result<(), zmq::Error> {
        match self {
            Uplink::Link { dealer, .. } => dealer.send(subscription(0, topic), zmq::DONTWAIT),
            Uplink::Pair { sub, .. } => sub.set_unsubscribe(topic.as_bytes()),
        }
    }

    /// Our presence token and topics, as subscriptions: what an agent (real
    /// or simulated) says when a manager greets a new connection. Best
    /// effort: a full queue means the manager is away and greets us again.
    pub fn declare(&self, presence: &str, topics: &[String]) {
        let _ = self.subscribe(presence);
        for t in topics {
            let _ = self.subscribe(t);
        }
    }

    pub fn set_linger(&self, ms: i32) {
        let _ = match self {
            Uplink::Link { dealer, .. } => dealer.set_linger(ms),
            Uplink::Pair { push, .. } => push.set_linger(ms),
        };
    }

    /// The sockets with their endpoints, for handshake watches and reconnects.
    pub fn sockets(&self) -> Vec<(&zmq::Socket, &str)> {
        match self {
            Uplink::Link { dealer, endpoint } => vec![(dealer, endpoint.as_str())],
            Uplink::Pair {
                sub,
                push,
                endpoint,
                sink,
            } => vec![(sub, endpoint.as_str()), (push, sink.as_str())],
        }
    }

    /// Whether a manager of ours says hello on each connection (the DEALER).
    pub fn is_link(&self) -> bool {
        matches!(self, Uplink::Link { .. })
    }
}

/// A subscription message on the DEALER: `[1|0][topic]`, as an XPUB hands one up.
pub fn subscription(kind: u8, topic: &str) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1 + topic.len());
    frame.push(kind);
    frame.extend_from_slice(topic.as_bytes());
    frame
}
