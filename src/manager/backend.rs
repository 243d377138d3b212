//! The manager's side of the backend's upstream: agents' subscriptions
//! (exact topics in 0.1-compatible mode), their presence tokens, the grant of
//! a private topic and the welcome that tells an agent it is admitted; in
//! secure mode, the agents' messages on their one connection (see [`links`])
//! and every message sent to an agent ([`Manager::to_agent`]).
//!
//! [`links`]: super::links

use super::{trust, Manager};
use crate::protocol::{self as p, Welcome};
use crate::transport::Peer;
use slog::{debug, warn};

/// Most distinct plain topics counted for `manager.status` in secure mode.
const TOPICS_SHOWN_MAX: usize = 4096;

impl Manager<'_> {
    /// Manual XPUB: subscribe the agent's pipe to the topic plus terminator,
    /// and watch presence subscriptions for agents that disconnect.
    pub(super) fn on_backend_subscription(&mut self, frame: Vec<u8>, peer: Option<Peer>) {
        let Some((&kind, topic)) = frame.split_first() else {
            return;
        };
        if kind > 1 {
            return; // not a subscription: an XSUB's own message
        }
        let port = crate::transport::endpoint_port(&self.bound.backend_endpoint);
        if !self.subscription_allowed(
            |m| &mut m.backend_subs,
            port,
            kind == 1,
            frame.len() > p::BACKEND_TOPIC_MAX,
            peer,
        ) {
            return;
        }
        let shown = String::from_utf8_lossy(topic).into_owned();
        if let Some(presence) = p::Presence::parse(&shown) {
            self.on_presence(kind == 1, presence, &shown);
            return;
        }
        if shown == p::ACKS_TOPIC {
            if kind == 1 {
                self.on_acks_subscription();
            }
            return;
        }
        if shown.starts_with('!') {
            return; // reserved prefixes are never granted as topics
        }
        if !self.gate.allow_unsigned {
            // Secure mode: plain topics are not granted; agents get requests on
            // their private topic once they proved their key.
            // Counted for manager.status only, and only as many topics as a
            // fleet has: a stranger's random topics are not kept.
            if !p::valid_topic(&shown)
                || (self.subscriptions.len() >= TOPICS_SHOWN_MAX
                    && !self.subscriptions.contains_key(&shown))
            {
                return;
            }
            // On the ROUTER only a granted connection's topics count, once
            // each, and uncounted when it closes (no libzmq does it for us).
            if let (Some(links), Some(rid)) = (&mut self.links, &self.link_rid) {
                let changed = if kind == 1 {
                    links.add_topic(rid, &shown)
                } else {
                    links.remove_topic(rid, &shown)
                };
                if !changed {
                    return;
                }
            }
            let n = self.subscriptions.entry(shown.clone()).or_default();
            *n = if kind == 1 {
                *n + 1
            } else {
                n.saturating_sub(1)
            };
            if *n == 0 {
                self.subscriptions.remove(&shown);
            }
            return;
        }
        let mut stored = topic.to_vec();
        stored.push(p::TOPIC_TERMINATOR);
        let rc = match kind {
            1 => {
                debug!(self.log, "agent subscribed"; "topic" => &shown);
                *self.subscriptions.entry(shown).or_default() += 1;
                self.s.backend.set_subscribe(&stored)
            }
            0 => {
                debug!(self.log, "agent unsubscribed"; "topic" => &shown);
                if let Some(n) = self.subscriptions.get_mut(&shown) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.subscriptions.remove(&shown);
                    }
                }
                self.s.backend.set_unsubscribe(&stored)
            }
            _ => Ok(()),
        };
        if let Err(e) = rc {
            warn!(self.log, "cannot apply subscription"; "error" => %e);
        }
    }

    /// A presence subscription arrived or ended. Signed and valid: grant the
    /// connection its private topic. Ended: the agent's connection is gone.
    fn on_presence(&mut self, subscribed: bool, presence: p::Presence, token: &str) {
        let instance = presence.instance.clone();
        if !subscribed {
            // A refreshed token's old one going away is not a disconnect.
            if self.presence.get(&instance).map(String::as_str) == Some(token) {
                self.presence.remove(&instance);
                if let Some(d) = self.registry.disconnected(&instance) {
                    self.departed(d);
                }
            }
            return;
        }
        let node = match self.gate.check_presence(&presence) {
            trust::Grant::No => {
                self.metrics.refusal(crate::metrics::refused::PRESENCE);
                debug!(self.log, "presence not granted (unsigned, stale or key not accepted)"; "instance" => &instance);
                return;
            }
            trust::Grant::Plain => {
                // 0.1-compatible mode: present, served on its plain topics.
                self.presence.insert(instance.clone(), token.to_owned());
                self.registry.connected(&instance, None);
                return;
            }
            trust::Grant::Private(node) => node,
        };
        // The token must come on the connection of the key that signed it:
        // a sniffed or replayed token cannot grant another connection.
        let signer = presence.signed.as_ref().map(|(_, s)| s.key.as_str());
        if signer.is_some_and(|k| !self.sent_by(k)) {
            self.metrics.refusal(crate::metrics::refused::PRESENCE);
            warn!(self.log, "presence token on another key's connection ignored"; "node" => &node);
            return;
        }
        // Only a granted token stands for the connection: a stranger's cannot end it.
        self.presence.insert(instance.clone(), token.to_owned());
        let mut private = p::private_topic(&node, &instance).into_bytes();
        private.push(p::TOPIC_TERMINATOR);
        match (&mut self.links, &self.link_rid) {
            (Some(links), Some(rid)) => links.grant(rid, &instance, private.clone()),
            (Some(_), None) => return, // not on the ROUTER: cannot happen
            (None, _) => {
                if let Err(e) = self.s.backend.set_subscribe(&private) {
                    warn!(self.log, "cannot grant the private topic"; "error" => %e);
                    return;
                }
            }
        }
        self.acks.granted(&node, &private);
        // Tells the agent it is admitted, so it stops renewing its token often.
        let _ = self.to_agent(&private, &p::encode(&Welcome::default()));
        self.registry.connected(&instance, Some(node));
    }
}

impl Manager<'_> {
    /// A message on the backend ROUTER (secure mode): `[routing id][frame]`.
    /// An empty frame is libzmq's notice that the connection closed
    /// (ZMQ_ROUTER_NOTIFY; a peer sending one only ends its own connection's
    /// standing); `[0|1][topic]` is a subscription as an XPUB would hand it
    /// up; anything else is what a sink reads (announcement or result).
    pub(super) fn on_link(&mut self, mut frames: Vec<Vec<u8>>) {
        if frames.len() < 2 {
            return;
        }
        let rid = frames.remove(0);
        if frames.len() == 1 && frames[0].is_empty() {
            self.link_closed(&rid);
            return;
        }
        if frames.len() == 1 && matches!(frames[0].first(), Some(0 | 1)) {
            let frame = frames.pop().unwrap_or_default();
            self.link_rid = Some(rid);
            self.on_backend_subscription(frame, None);
            self.link_rid = None;
            return;
        }
        self.on_sink(frames);
    }

    /// An agent's connection closed: if it still stood for its instance, the
    /// agent is lost (its pending jobs get `no_response`).
    fn link_closed(&mut self, rid: &[u8]) {
        let Some(closed) = self.links.as_mut().and_then(|l| l.closed(rid)) else {
            return;
        };
        for t in &closed.topics {
            if let Some(n) = self.subscriptions.get_mut(t) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.subscriptions.remove(t);
                }
            }
        }
        if let Some(instance) = closed.lost {
            self.presence.remove(&instance);
            if let Some(d) = self.registry.disconnected(&instance) {
                self.departed(d);
            }
        }
    }

    /// [`send_to_agent`] on our backend.
    pub(super) fn to_agent(&self, topic: &[u8], body: &[u8]) -> Result<(), String> {
        send_to_agent(&self.s.backend, self.links.as_ref(), topic, body)
    }
}

/// Send `[topic][body]` to the agents on `topic` (with its terminator): on the
/// ROUTER (`links`) to the one connection granted that private topic, on the
/// XPUB to its subscribers. Err when it could not be queued (a connection
/// found gone is dealt with when libzmq's notice of it is read).
pub(super) fn send_to_agent(
    backend: &zmq::Socket,
    links: Option<&super::links::Links>,
    topic: &[u8],
    body: &[u8],
) -> Result<(), String> {
    let Some(links) = links else {
        return backend
            .send_multipart([topic, body], zmq::DONTWAIT)
            .map_err(|e| e.to_string());
    };
    let Some(rid) = links.route(topic) else {
        return Err("the agent is not connected".into());
    };
    match backend.send_multipart([rid, topic, body], zmq::DONTWAIT) {
        Ok(()) => Ok(()),
        Err(zmq::Error::EHOSTUNREACH) => Err("the agent's connection is gone".into()),
        Err(zmq::Error::EAGAIN) => {
            Err("the agent's queue is full (it does not read its connection)".into())
        }
        Err(e) => Err(e.to_string()),
    }
}
