//! The manager's sink: agents' announcements (the registry), their results
//! (routed to the job, stored, published to the client that asked,
//! acknowledged to the agent once stored durably) and what happens when an
//! agent goes away.

use super::registry::Departure;
use super::trust::AnnounceRefused;
use super::{now_ms, publish, Manager, REPLAYS_MAX};
use crate::jobstore::StoreEvent;
use crate::metrics::refused;
use crate::protocol::{self as p, ResultMsg, SinkMessage, Status};
use crate::security::Role;
use crate::transport::Peer;
use serde_json::value::RawValue;
use slog::{debug, info, warn};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How long results written to the store wait to be acknowledged together:
/// a little over the store's own sync period, so that its flusher thread has
/// nearly always synced them already and our `flush` costs no fsync on the
/// manager's thread.
const ACK_INTERVAL: Duration =
    Duration::from_millis(crate::jobstore::FLUSH_INTERVAL.as_millis() as u64 + 200);

/// Most results awaiting their acknowledgement; beyond, the oldest are not
/// acknowledged (their agents send them again, and the store keeps one copy).
const ACKS_PENDING_MAX: usize = 200_000;

/// Results of jobs this manager does not hold (dispatched before a restart)
/// remembered by (job, node), so that a copy sent again is not published twice.
const FOREIGN_SEEN_MAX: usize = 100_000;

/// The acknowledgements owed to agents (see [`p::Ack`]): an agent keeps each
/// result and sends it again until the manager says the store holds it.
#[derive(Default)]
pub(super) struct Acks {
    /// Nodes whose agent subscribed to [`p::ACKS_TOPIC`] (keeps an outbox);
    /// only they are sent acks. At most one entry per accepted key.
    capable: HashSet<String>,
    /// node -> the private topic (with terminator) granted to it last.
    topics: HashMap<String, Vec<u8>>,
    /// Accepted results whose store events are not yet written: (node, job).
    unwritten: VecDeque<(String, String)>,
    /// Written (a lazy commit), awaiting the sync that makes them durable.
    written: VecDeque<(String, String)>,
    written_since: Option<Instant>,
    /// (job, node) of results for jobs not held in memory, oldest first.
    foreign: HashSet<(String, String)>,
    foreign_order: VecDeque<(String, String)>,
}

impl Acks {
    /// The agent of `node` said it keeps results until acknowledged.
    pub(super) fn capable(&mut self, node: &str) {
        if !self.capable.contains(node) {
            self.capable.insert(node.to_owned());
        }
    }

    /// `node`'s private topic was granted (`topic` with its terminator).
    pub(super) fn granted(&mut self, node: &str, topic: &[u8]) {
        self.topics.insert(node.to_owned(), topic.to_vec());
    }

    /// An accepted result of `node` for `uuid`, to acknowledge once stored.
    fn received(&mut self, node: &str, uuid: &str) {
        if !self.capable.contains(node) {
            return;
        }
        self.unwritten.push_back((node.to_owned(), uuid.to_owned()));
        if self.unwritten.len() + self.written.len() > ACKS_PENDING_MAX {
            // Not acknowledged: sent again by the agent later.
            if self.written.pop_front().is_none() {
                self.unwritten.pop_front();
            }
        }
    }

    /// Events written so far include those of every result received so far.
    fn all_written(&mut self) {
        if !self.unwritten.is_empty() {
            self.written_since.get_or_insert_with(Instant::now);
            self.written.extend(self.unwritten.drain(..));
        }
    }

    /// Some store events were dropped unwritten: acknowledge none of those waiting.
    pub(super) fn forget_unwritten(&mut self) {
        self.unwritten.clear();
    }

    /// The store failed: what it committed since its last sync may be lost
    /// when it is reopened, so none of it is acknowledged (sent again instead).
    pub(super) fn forget_written(&mut self) {
        self.written.clear();
        self.written_since = None;
    }

    fn due(&self, now: bool) -> bool {
        !self.written.is_empty()
            && (now
                || self
                    .written_since
                    .is_some_and(|t| t.elapsed() >= ACK_INTERVAL))
    }

    /// The acks for everything written, per node on its private topic, in
    /// messages of at most [`p::ACK_UUIDS_MAX`] jobs. Nodes without a granted
    /// topic get none (their agent sends again once welcomed).
    fn take(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.written_since = None;
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (node, uuid) in self.written.drain(..) {
            by_node.entry(node).or_default().push(uuid);
        }
        let mut out = Vec::new();
        for (node, uuids) in by_node {
            let Some(topic) = self.topics.get(&node) else {
                continue;
            };
            for chunk in uuids.chunks(p::ACK_UUIDS_MAX) {
                out.push((
                    topic.clone(),
                    p::encode(&p::Ack::new(&node, chunk.to_vec())),
                ));
            }
        }
        out
    }

    /// Whether `node`'s result for a job not held in memory came before (and remember it).
    fn foreign_seen(&mut self, uuid: &str, node: &str) -> bool {
        let key = (uuid.to_owned(), node.to_owned());
        if self.foreign.contains(&key) {
            return true;
        }
        self.foreign.insert(key.clone());
        self.foreign_order.push_back(key);
        if self.foreign_order.len() > FOREIGN_SEEN_MAX {
            if let Some(old) = self.foreign_order.pop_front() {
                self.foreign.remove(&old);
            }
        }
        false
    }
}

impl Manager<'_> {
    /// An agent subscribed to [`p::ACKS_TOPIC`]: its node gets acks. Only an
    /// accepted agent key counts (secure mode); the agent subscribes again
    /// with each presence token, so a key accepted later counts from then on.
    pub(super) fn on_acks_subscription(&mut self) {
        if let Some(key) = self.accepted_peer(Role::Agent) {
            self.acks.capable(key.name());
        }
    }

    /// Acknowledge the results the store holds durably: once every event so
    /// far is written, and [`ACK_INTERVAL`] after the first of them (`now`:
    /// at once, as we stop), sync the store and send the acks.
    pub(super) fn acknowledge(&mut self, now: bool) {
        if self.events.is_empty() && self.failing.is_none() {
            self.acks.all_written();
        }
        if !self.acks.due(now) {
            return;
        }
        match self.store.as_ref().map(|s| s.flush_nowait()) {
            Some(Ok(true)) => {}
            // Still on its way to the database (the PostgreSQL store): next round.
            Some(Ok(false)) => return,
            // Not durable yet: tried again next round (the store's own error is logged where it writes).
            // The store is reopened after an I/O error, which may lose the
            // commits that were not synced: their agents send them again.
            Some(Err(e)) => {
                debug!(self.log, "job store not synced; results not acknowledged"; "error" => format!("{e:#}"));
                self.acks.forget_written();
                return;
            }
            None => return,
        }
        for (topic, ack) in self.acks.take() {
            if let Err(e) = self.to_agent(&topic, &ack) {
                // The agent sends those results again; the store keeps one copy.
                debug!(self.log, "cannot send an acknowledgement"; "error" => %e);
            }
        }
    }

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
                let proven = self.peers.is_some() && a.auth.is_some();
                if let Some(auth) = &a.auth {
                    if !self.sent_by(&auth.key) {
                        self.metrics.refusal(refused::ANNOUNCE);
                        warn!(self.log, "announcement for a key other than the connection's ignored"; "node" => &a.node);
                        return;
                    }
                }
                let (key, a) = match self.gate.check_announce_on(&a, &self.source, proven) {
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
                // Secure mode: the node is the connection's (or the signature's) own.
                if let (Some(_), Some(n)) = (&self.peers, &node) {
                    self.acks.received(n, &uuid);
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
        // A copy of a result we have (the agent sent it again, not yet acknowledged
        // or the ack lost) is acknowledged only: not counted, published or stored twice.
        if let Some(n) = &node {
            let again = match self.jobs.get(&uuid) {
                Some(job) => job.answered.contains(n),
                None => self.acks.foreign_seen(&uuid, n),
            };
            if again {
                debug!(self.log, "result received again; acknowledged only"; "uuid" => &uuid, "node" => n);
                return;
            }
        }
        let since_dispatch = self.jobs.get(&uuid).map(|j| j.created.elapsed());
        self.metrics.result(status.as_str(), since_dispatch);
        if let Some(job) = self.jobs.get_mut(&uuid) {
            if let Some(n) = &node {
                job.pending.remove(n);
                // A late answer (after `no_response`) is what a follower sees.
                if status != Status::NoResponse {
                    job.silent.remove(n);
                    job.answered.insert(n.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_go_to_capable_nodes_once_written_in_bounded_messages() {
        let mut acks = Acks::default();
        acks.granted("web1", b"!to/web1/i1\0");
        acks.received("web1", "u0"); // not capable yet: never acked
        acks.capable("web1");
        acks.capable("web2"); // capable, but no private topic granted
        for i in 0..p::ACK_UUIDS_MAX + 1 {
            acks.received("web1", &format!("u{i}"));
        }
        acks.received("web2", "w");
        assert!(!acks.due(true), "nothing written yet");
        acks.all_written();
        assert!(acks.due(true));
        let out = acks.take();
        assert_eq!(out.len(), 2, "two messages for web1, none for web2");
        assert!(out.iter().all(|(t, _)| t == b"!to/web1/i1\0"));
        let first: p::Ack = serde_json::from_slice(&out[0].1).unwrap();
        assert_eq!(
            (first.node.as_str(), first.uuids.len()),
            ("web1", p::ACK_UUIDS_MAX)
        );
        assert!(!acks.due(true));
        // Dropped unwritten (a full store hold): not acknowledged.
        acks.received("web1", "x");
        acks.forget_unwritten();
        acks.all_written();
        assert!(acks.take().is_empty());
        // Written, but the store failed before a sync: not acknowledged.
        acks.received("web1", "y");
        acks.all_written();
        acks.forget_written();
        assert!(!acks.due(true));
    }

    #[test]
    fn a_foreign_result_is_seen_once() {
        let mut acks = Acks::default();
        assert!(!acks.foreign_seen("u", "n"));
        assert!(acks.foreign_seen("u", "n"));
        assert!(!acks.foreign_seen("u", "m"));
    }
}
