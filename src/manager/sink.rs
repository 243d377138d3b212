//! The manager's sink: agents' announcements (the registry), their results
//! (routed to the job, stored, published to the client that asked) and what
//! happens when an agent goes away.

use super::registry::Departure;
use super::trust::AnnounceRefused;
use super::{now_ms, publish, Manager, REPLAYS_MAX};
use crate::jobstore::StoreEvent;
use crate::metrics::refused;
use crate::protocol::{self as p, ResultMsg, SinkMessage, Status};
use crate::transport::Peer;
use serde_json::value::RawValue;
use slog::{debug, info, warn};

impl Manager<'_> {
    /// A client subscribed to (or left) a job id: deliver what is held for it,
    /// once per connection (a stranger re-subscribing without reading had
    /// every stored result queued again each time, until libzmq ran out of
    /// memory), and to at most REPLAYS_MAX connections per job.
    pub(super) fn on_result_subscription(&mut self, frame: Vec<u8>, peer: Option<Peer>) {
        let Some((&kind, topic)) = frame.split_first() else {
            return;
        };
        if kind > 1 {
            return; // not a subscription: an XSUB's own message
        }
        let conn = peer.as_ref().map(|p| p.conn);
        let port = Some(self.bound.result_publisher_port);
        if !self.subscription_allowed(
            |m| &mut m.result_subs,
            port,
            kind == 1,
            frame.len() > p::RESULT_TOPIC_MAX,
            peer,
        ) {
            return;
        }
        let uuid = String::from_utf8_lossy(topic).into_owned();
        let Some(job) = self.jobs.get_mut(&uuid) else {
            debug!(self.log, "subscription to unknown job"; "uuid" => &uuid);
            return;
        };
        if kind == 0 {
            // Results go on being published: a connection that subscribes
            // later is replayed what it missed.
            return;
        }
        job.subscribed = true;
        if let Some(conn) = conn {
            if job.replayed.contains(&conn) {
                return;
            }
            if job.replayed.len() >= REPLAYS_MAX {
                if job.replayed.len() == REPLAYS_MAX {
                    warn!(self.log, "job's results replayed to too many connections; no more replays (follow it with client --job)";
                        "uuid" => &uuid, "replays" => REPLAYS_MAX);
                    job.replayed.insert(conn);
                }
                return;
            }
            job.replayed.insert(conn);
        }
        for frame in job.results.iter().chain(job.silent.values()) {
            publish(&self.s.results, self.log, &uuid, frame);
        }
    }

    pub(super) fn on_sink(&mut self, mut frames: Vec<Vec<u8>>) {
        let (Some(frame), true) = (frames.pop(), frames.is_empty()) else {
            warn!(self.log, "sink message dropped: expected one frame"; "frames" => frames.len() + 1);
            return;
        };
        match SinkMessage::decode(&frame) {
            Ok(SinkMessage::Announce(a)) => {
                // Only the key this connection proved may announce (or be filed as pending).
                if let Some(auth) = &a.auth {
                    if !self.sent_by(&auth.key) {
                        self.metrics.refusal(refused::ANNOUNCE);
                        warn!(self.log, "announcement for a key other than the connection's ignored"; "node" => &a.node);
                        return;
                    }
                }
                let (key, a) = match self.gate.check_announce(&a, &self.source) {
                    Ok((k, signed)) => (k.map(|k| k.to_string()), signed),
                    Err(why) => {
                        self.metrics.refusal(refused::ANNOUNCE);
                        if let AnnounceRefused::ClockSkew { node, skew_s, .. } = &why {
                            if self.registry.skew_of(node).is_none() {
                                warn!(self.log, "agent refused for its clock"; "node" => node,
                                    "skew_s" => skew_s, "why" => why.to_string());
                            }
                            self.registry.refused_for_skew(node, *skew_s);
                        } else if a.kind == p::AnnounceKind::Hello {
                            warn!(self.log, "agent not admitted"; "node" => &a.node, "why" => why.to_string());
                        }
                        return;
                    }
                };
                if !self.registry.is_up(&a.node) && a.kind != p::AnnounceKind::Bye {
                    info!(self.log, "agent up"; "node" => &a.node, "system" => &a.system,
                        "topics" => a.topics.join(","), "version" => &a.agent_version);
                }
                if let Some(d) = self.registry.announce(&a, key) {
                    self.departed(d);
                }
            }
            Ok(SinkMessage::Result {
                uuid,
                node,
                status,
                auth,
                body,
            }) => {
                // On CURVE the connection proved the agent's key: a result naming
                // that key's node needs no signature check here (the client checks
                // the seal end to end). On plaintext, the signature is the proof.
                let checked = match &self.peers {
                    Some(_) => match self.accepted_peer(crate::security::Role::Agent) {
                        // Two accepted keys for one node: neither speaks for it.
                        Some(k) if !self.gate.keys.holds_its_name(&k) => Err(format!(
                            "result from {}, one of several accepted keys of node {:?}",
                            k.fingerprint(),
                            k.name()
                        )),
                        Some(k) if node.as_deref() == Some(k.name()) && auth.is_some() => Ok(()),
                        Some(k) => Err(format!(
                            "result for node {node:?} on the connection of {}",
                            k.name()
                        )),
                        // Not in the index yet (a key accepted a moment ago): the signature decides.
                        None => match &auth {
                            Some(a) if !self.sent_by(&a.key) => {
                                Err("result signed with a key other than the connection's"
                                    .to_owned())
                            }
                            _ => self
                                .gate
                                .check_result(auth.as_ref(), &uuid, node.as_deref())
                                .map_err(|e| e.to_string()),
                        },
                    },
                    None => self
                        .gate
                        .check_result(auth.as_ref(), &uuid, node.as_deref())
                        .map_err(|e| e.to_string()),
                };
                if let Err(why) = checked {
                    self.metrics.refusal(refused::RESULT);
                    warn!(self.log, "result not accepted"; "uuid" => &uuid, "node" => ?node, "why" => %why);
                    return;
                }
                self.on_result(uuid, node, status, frame, body)
            }
            Err(e) => {
                self.metrics.refusal(refused::MALFORMED);
                // Nothing can route it; say so loudly rather than lose it silently.
                warn!(self.log, "sink message dropped"; "reason" => %e,
                    "start" => %String::from_utf8_lossy(&frame[..frame.len().min(200)]));
            }
        }
    }

    fn on_result(
        &mut self,
        uuid: String,
        node: Option<String>,
        status: Status,
        frame: Vec<u8>,
        body: Box<RawValue>,
    ) {
        debug!(self.log, "result received"; "uuid" => &uuid, "node" => ?node, "status" => status.as_str());
        let since_dispatch = self.jobs.get(&uuid).map(|j| j.created.elapsed());
        self.metrics.result(status.as_str(), since_dispatch);
        if let Some(job) = self.jobs.get_mut(&uuid) {
            if let Some(n) = &node {
                job.pending.remove(n);
                // A late answer (after `no_response`) is what a follower sees.
                if status != Status::NoResponse {
                    job.silent.remove(n);
                }
                if job.pending.is_empty() {
                    self.events.push(StoreEvent::Finished {
                        uuid: uuid.clone(),
                        at_ms: now_ms(),
                    });
                }
            }
            job.results.push(frame.clone());
        }
        // Kept whatever happens to the client: a late answer is in the store.
        self.events.push(StoreEvent::Result {
            uuid: uuid.clone(),
            node: node.unwrap_or_else(|| "(unnamed)".into()),
            status: status.as_str().to_owned(),
            received_ms: now_ms(),
            result: body,
        });
        self.deliver(&uuid, &frame);
    }

    /// An agent went away: every job still waiting for it gets `no_response`.
    pub(super) fn departed(&mut self, d: Departure) {
        warn!(self.log, "agent down"; "node" => &d.node, "why" => d.why);
        let mut out = Vec::new();
        for (uuid, job) in self.jobs.iter_mut() {
            if job.pending.remove(&d.node) {
                let r = p::encode(&ResultMsg::no_response(
                    uuid,
                    &d.node,
                    &format!("no answer: {}", d.why),
                ));
                job.silent.insert(d.node.clone(), r.clone());
                self.metrics.result(Status::NoResponse.as_str(), None);
                self.events.push(StoreEvent::NoResponse {
                    uuid: uuid.clone(),
                    node: d.node.clone(),
                    at_ms: now_ms(),
                });
                if job.pending.is_empty() {
                    self.events.push(StoreEvent::Finished {
                        uuid: uuid.clone(),
                        at_ms: now_ms(),
                    });
                }
                out.push((uuid.clone(), r));
            }
        }
        for (uuid, r) in out {
            self.deliver(&uuid, &r);
        }
    }
}
