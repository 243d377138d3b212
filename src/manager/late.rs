//! Requests to nodes not back since a manager restart: within the startup
//! grace such a node is expected, and sent the request as soon as it is
//! reachable again, while the client still waits for it (its signed
//! `accept_by`, after which the agent would refuse it) and the grace lasts.
//! A node not back by then is answered for with `no_response`.

use super::registry::{utc, NOT_BACK};
use super::routing::NOT_CONNECTED;
use super::{now_ms, Manager};
use crate::jobstore::StoreEvent;
use crate::protocol::{self as p, RequestBody, ResultMsg, ServiceRequest, Status};
use slog::{debug, info};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long after a start nodes known from before it are awaited, beyond
/// two of their heartbeat intervals: an agent retries its connection at
/// most every 5 s (reconnect_ivl_max), then announces itself.
pub const GRACE_MARGIN: Duration = Duration::from_secs(10);

/// The startup grace for agents whose longest heartbeat interval is `beat`.
pub fn grace(beat: Duration) -> Duration {
    beat * 2 + GRACE_MARGIN
}

/// A job's nodes that are not back yet, and what to send them.
pub(super) struct Late {
    pub nodes: BTreeSet<String>,
    /// The dispatch frame, as the others were sent.
    pub body: Vec<u8>,
    /// The last moment it may be sent.
    pub until: Instant,
}

impl Manager<'_> {
    /// Whether the manager is within its startup grace.
    pub(super) fn starting(&self) -> bool {
        self.started.elapsed() < self.grace
    }

    /// Until when a request may still be sent to a node that comes back:
    /// the end of the grace, or the client's deadline if sooner.
    pub(super) fn late_until(&self, req: &ServiceRequest) -> Instant {
        let grace_end = self.started + self.grace;
        let accept_by = req
            .auth
            .as_ref()
            .and_then(|a| RequestBody::from_signed(&a.body).ok())
            .and_then(|b| b.accept_by);
        match accept_by {
            Some(by) => {
                let left = Duration::from_millis(by.saturating_sub(now_ms()));
                grace_end.min(Instant::now() + left)
            }
            None => grace_end,
        }
    }

    /// Send waiting requests to the nodes that came back; answer for those
    /// whose time ran out. Called every round while some wait.
    pub(super) fn dispatch_late(&mut self) {
        if self.awaiting.is_empty() {
            return;
        }
        let secure = !self.gate.allow_unsigned;
        let mut expired = Vec::new();
        for uuid in std::mem::take(&mut self.awaiting) {
            let Some(job) = self.jobs.get_mut(&uuid) else {
                continue;
            };
            let Some(late) = job.late.as_mut() else {
                continue;
            };
            let open = Instant::now() < late.until;
            let back: Vec<String> = late
                .nodes
                .iter()
                .filter(|n| open && self.registry.is_up(n))
                .cloned()
                .collect();
            for n in back {
                late.nodes.remove(&n);
                let Some(e) = self.registry.get(&n) else {
                    continue;
                };
                let topic = if secure {
                    p::private_topic(&e.node, &e.instance)
                } else {
                    n.clone()
                };
                let frame = p::backend_topic(&topic);
                match super::backend::send_to_agent(
                    &self.s.backend,
                    self.links.as_ref(),
                    &frame,
                    &late.body,
                ) {
                    Ok(()) => {
                        info!(self.log, "request sent to an agent back since the restart"; "uuid" => &uuid, "node" => &n)
                    }
                    Err(e) => {
                        debug!(self.log, "cannot send the request to an agent back since the restart"; "error" => %e);
                        expired.push((
                            uuid.clone(),
                            n,
                            format!("no answer: cannot send it the request: {e}"),
                        ));
                    }
                }
            }
            if !open {
                let restarted = utc(self.started_ms);
                for n in std::mem::take(&mut late.nodes) {
                    let reason = if self.registry.connecting(&n) {
                        format!(
                            "{NOT_CONNECTED}: it reconnected after the manager restarted at \
                            {restarted}, but not in time for the request to be sent to it"
                        )
                    } else {
                        format!(
                            "{NOT_BACK} at {restarted}: it did not come back while the \
                            request could still be sent to it"
                        )
                    };
                    expired.push((uuid.clone(), n, reason));
                }
            }
            if late.nodes.is_empty() {
                job.late = None;
            } else {
                self.awaiting.insert(uuid);
            }
        }
        for (uuid, node, why) in expired {
            self.answer_for(&uuid, &node, &why);
        }
    }

    /// `node` will not answer job `uuid`: its `no_response`, stored and
    /// published (a late real answer still replaces it).
    pub(super) fn answer_for(&mut self, uuid: &str, node: &str, why: &str) {
        let Some(job) = self.jobs.get_mut(uuid) else {
            return;
        };
        if !job.pending.remove(node) {
            return;
        }
        let r = p::encode(&ResultMsg::no_response(uuid, node, why));
        job.silent.insert(node.to_owned(), r.clone());
        self.metrics.result(Status::NoResponse.as_str(), None);
        self.events.push(StoreEvent::NoResponse {
            uuid: uuid.to_owned(),
            node: node.to_owned(),
            at_ms: now_ms(),
        });
        if job.pending.is_empty() {
            self.events.push(StoreEvent::Finished {
                uuid: uuid.to_owned(),
                at_ms: now_ms(),
            });
        }
        self.deliver(uuid, &r);
    }
}
