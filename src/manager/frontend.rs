//! The manager's frontend: each client frame is decoded once, then either
//! dispatched (gate, routing, publish, job) or answered as a follow request.

use super::{now_ms, publish, routing, trust, Job, Manager};
use crate::jobstore::StoreEvent;
use crate::metrics::{outcome, refused};
use crate::protocol::mgmt as m;
use crate::protocol::{
    self as p, Accepted, Dispatch, ErrorReply, FollowRecord, FrontendRequest, ResultMsg,
    ServiceRequest,
};
use slog::{info, warn};
use std::collections::BTreeMap;
use std::time::Instant;

impl Manager<'_> {
    pub(super) fn on_frontend(&mut self, frames: Vec<Vec<u8>>) {
        // A REQ client sends [identity, "", body]; a DEALER may omit the empty delimiter.
        let (prefix_len, body) = match frames.iter().position(Vec::is_empty) {
            Some(i) => (i + 1, &frames[i + 1..]),
            None => (1, &frames[1.min(frames.len())..]),
        };
        let reply = match body {
            [one] => self.accept(one),
            _ => {
                self.metrics.request(outcome::INVALID);
                Err(ErrorReply::new(format!(
                    "expected one JSON frame after the envelope, got {}",
                    body.len()
                )))
            }
        };
        let (payload, attach_to) = match reply {
            Ok(v) => v,
            Err(e) => {
                warn!(self.log, "request refused"; "reason" => &e.msg);
                (p::encode(&e), None)
            }
        };
        let envelope = &frames[..prefix_len];
        let mut out: Vec<&[u8]> = envelope.iter().map(Vec::as_slice).collect();
        out.push(&payload);
        if let Err(e) = self.s.frontend.send_multipart(out, zmq::DONTWAIT) {
            warn!(self.log, "cannot answer client"; "error" => %e);
            return;
        }
        if let Some(uuid) = attach_to {
            self.attach(&uuid, envelope.to_vec());
        }
    }

    /// Answer a frontend frame: a new request, or `{"job": ID}` to follow an
    /// earlier one; with the job whose results go to this connection.
    fn accept(&mut self, body: &[u8]) -> Result<(Vec<u8>, Option<String>), ErrorReply> {
        let request = FrontendRequest::decode(body).map_err(|e| {
            self.metrics.request(outcome::INVALID);
            ErrorReply::new(e)
        })?;
        let (mut accepted, attach) = match request {
            FrontendRequest::Follow {
                job,
                offset,
                attach,
            } => match self.follow(&job, offset)? {
                Ok(a) => (a, attach),
                Err(record) => return Ok((record, None)),
            },
            FrontendRequest::Service(req) => {
                let attach = req.attach && !req.dry_run;
                (self.dispatch(*req)?, attach)
            }
        };
        accepted.attached = attach;
        let uuid = attach.then(|| accepted.uuid.clone());
        Ok((p::encode(&accepted), uuid))
    }

    /// Send a job's results on the client connection `envelope` from now on,
    /// after those it already has; each connection once, at most
    /// REPLAYS_MAX per job (a retried request comes on a new connection).
    fn attach(&mut self, uuid: &str, envelope: Vec<Vec<u8>>) {
        let Some(job) = self.jobs.get_mut(uuid) else {
            return;
        };
        if job.attached.contains(&envelope) {
            return;
        }
        if job.attached.len() >= super::REPLAYS_MAX {
            warn!(self.log, "too many connections attached to a job; this one gets no results (follow it with client --job)";
                "uuid" => uuid, "connections" => super::REPLAYS_MAX);
            return;
        }
        job.attached.push(envelope);
        let job = &self.jobs[uuid];
        let envelope = job.attached.last().expect("just pushed");
        for frame in job.results.iter().chain(job.silent.values()) {
            send_attached(&self.s.frontend, self.log, envelope, uuid, frame);
        }
    }

    /// A job's result to every connection attached to it, and to the result
    /// publisher once a client subscribed there (a job this manager does not
    /// hold, dispatched before a restart, is published as 0.1 did).
    pub(super) fn deliver(&self, uuid: &str, frame: &[u8]) {
        let Some(job) = self.jobs.get(uuid) else {
            publish(&self.s.results, self.log, uuid, frame);
            return;
        };
        for envelope in &job.attached {
            send_attached(&self.s.frontend, self.log, envelope, uuid, frame);
        }
        if job.subscribed {
            publish(&self.s.results, self.log, uuid, frame);
        }
    }

    /// The accepted key of each of `nodes` that has one.
    fn agent_keys<'n>(
        &self,
        nodes: impl IntoIterator<Item = &'n String>,
    ) -> BTreeMap<String, String> {
        nodes
            .into_iter()
            .filter_map(|n| Some((n.clone(), self.registry.get(n)?.key.clone()?)))
            .collect()
    }

    /// Re-attach a client to a job: one still in memory is accepted again
    /// (its results replayed on the result publisher or the connection, and
    /// its missing answers still arrive); an older one is answered (`Err`)
    /// from the job store in one reply.
    fn follow(
        &mut self,
        uuid: &str,
        offset: usize,
    ) -> Result<Result<Accepted, Vec<u8>>, ErrorReply> {
        let Some(job) = self.jobs.get(uuid) else {
            self.write_events();
            let (record, next) = self
                .readable_store()
                .map_err(ErrorReply::new)?
                .get_page(uuid, offset, m::RESULTS_PAGE, m::PAGE_BYTES)
                .map_err(|e| ErrorReply::new(format!("cannot read the job store: {e:#}")))?
                .ok_or_else(|| ErrorReply::new(format!("no job {uuid} in the job store")))?;
            return Ok(Err(p::encode(&FollowRecord {
                v: p::PROTOCOL_VERSION,
                uuid: uuid.to_owned(),
                agent_keys: self.agent_keys(&record.expected),
                record,
                next,
            })));
        };
        Ok(Ok(Accepted {
            uuid: uuid.to_owned(),
            port: self.bound.result_publisher_port,
            v: Some(p::PROTOCOL_VERSION),
            expected: Some(job.expected.clone()),
            unregistered: None,
            agent_keys: Some(self.agent_keys(&job.expected)),
            pending_keys: None,
            near: None,
            attached: false,
            started_ms_ago: None,
        }))
    }

    /// Validate a request, decide who must answer, publish it and say where
    /// results appear. Each way out counts the request's outcome once.
    fn dispatch(&mut self, mut req: ServiceRequest) -> Result<Accepted, ErrorReply> {
        if let Some(job) = &req.resume {
            if !p::valid_job_id(job) {
                self.metrics.request(outcome::INVALID);
                return Err(ErrorReply::new(
                    "request refused: resume must be the 32 hex digits of a job id",
                ));
            }
            // Taken over already (the client asked twice): follow it.
            if self.jobs.contains_key(job) {
                let job = job.clone();
                self.metrics.request(outcome::REPEATED);
                return match self.follow(&job, 0)? {
                    Ok(a) => Ok(a),
                    Err(_) => Err(ErrorReply::new(format!("job {job} is no longer in memory"))),
                };
            }
        }
        // A request travels on its signer's own connection: a key that was
        // captured (or relayed by a fake manager) cannot be used from another.
        if let Some(auth) = &req.auth {
            if !self.sent_by(&auth.key) {
                self.metrics.request(outcome::REFUSED);
                self.metrics.refusal(refused::REQUEST);
                return Err(ErrorReply::new(
                    "request refused: signed with a key other than the one this connection proved",
                ));
            }
        }
        let (client, request_id) = match self.gate.check_request(&req, &self.source) {
            Ok(Some((key, id))) => (Some(key), Some(id)),
            Ok(None) => (None, None),
            Err(trust::Refused::Replayed(id, msg)) => {
                return match self.answered.get(&id) {
                    Some((_, a)) => {
                        self.metrics.request(outcome::REPEATED);
                        Ok(a.clone())
                    }
                    None => {
                        self.metrics.request(outcome::REFUSED);
                        self.metrics.refusal(refused::REPLAY);
                        Err(ErrorReply::new(msg))
                    }
                };
            }
            Err(trust::Refused::Other(msg)) => {
                self.metrics.request(outcome::REFUSED);
                self.metrics.refusal(refused::REQUEST);
                return Err(ErrorReply::new(msg));
            }
        };
        let mut route = routing::route(
            &req,
            &self.registry,
            &self.subscriptions,
            !self.gate.allow_unsigned,
            self.starting(),
        )
        .map_err(|e| {
            self.metrics.request(outcome::INVALID);
            ErrorReply::new(e)
        })?;
        // A job another manager accepted keeps its id: the agents' results
        // and the client's report name it.
        let uuid = match req.resume.take() {
            Some(job) => job,
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let accepted = Accepted {
            uuid: uuid.clone(),
            port: self.bound.result_publisher_port,
            v: Some(p::PROTOCOL_VERSION),
            expected: Some(route.expected.clone()),
            unregistered: Some(route.unregistered),
            agent_keys: Some(self.agent_keys(&route.expected)),
            // Why fewer nodes may answer than the operator thinks: said to the client.
            pending_keys: Some(self.gate.pending_agent_count()).filter(|n| *n > 0),
            near: (route.expected.is_empty() && route.unregistered == 0)
                .then(|| self.registry.near(&req.topic))
                .filter(|near| !near.is_empty()),
            attached: false,
            // Nobody matched right after a start: the agents may not be back yet.
            started_ms_ago: (route.expected.is_empty()
                && route.unregistered == 0
                && self.starting())
            .then(|| self.started.elapsed().as_millis() as u64),
        };
        // Where this connection gets answers is no part of the job.
        req.attach = false;
        if req.dry_run {
            self.metrics.request(outcome::DRY_RUN);
            return Ok(accepted);
        }
        let late_until = (!route.late.is_empty()).then(|| self.late_until(&req));
        // The signature moves on to the agents; the job keeps what was asked.
        let dispatch = Dispatch {
            cmd: req.cmd.clone(),
            service: req.service.clone(),
            topic: req.topic.clone(),
            uuid: uuid.clone(),
            // The client's own (none from a 0.1 client): the agent answers
            // a 0.1 client in 0.1's shape.
            v: req.v,
            auth: req.auth.take(),
        };
        let body = p::encode(&dispatch);
        for t in &route.topics {
            let topic = p::backend_topic(t);
            if let Err(e) = self.to_agent(&topic, &body) {
                // One agent's connection (secure mode): that node is answered
                // for at once; the XPUB failing fails the whole request.
                match t
                    .strip_prefix(p::PRIVATE_PREFIX)
                    .and_then(|r| r.split('/').next())
                {
                    Some(node) if self.links.is_some() => route.unreachable.push((
                        node.to_owned(),
                        format!("no answer: cannot send it the request: {e}"),
                    )),
                    _ => {
                        self.metrics.request(outcome::ERROR);
                        return Err(ErrorReply::new(format!("cannot dispatch the request: {e}")));
                    }
                }
            }
        }
        let mut job = Job {
            created: Instant::now(),
            created_ms: now_ms(),
            request: req,
            expected: route.expected.clone(),
            pending: route.expected.iter().cloned().collect(),
            results: Vec::new(),
            silent: BTreeMap::new(),
            subscribed: false,
            replayed: Default::default(),
            attached: Vec::new(),
            late: late_until.map(|until| super::late::Late {
                nodes: route.late.iter().cloned().collect(),
                body: body.clone(),
                until,
            }),
            answered: Default::default(),
        };
        if job.late.is_some() {
            self.awaiting.insert(uuid.clone());
        }
        self.events.push(StoreEvent::NewJob {
            uuid: uuid.clone(),
            created_ms: job.created_ms,
            request: serde_json::to_value(&job.request).unwrap_or_default(),
            expected: route.expected.clone(),
            client: client.as_ref().map(|k| k.to_string()),
        });
        // Nodes that were not sent the request will not answer: say so at once.
        for (n, why) in route.unreachable {
            let r = ResultMsg::no_response(&uuid, &n, &why);
            job.pending.remove(&n);
            job.silent.insert(n.clone(), p::encode(&r));
            self.metrics.result(p::Status::NoResponse.as_str(), None);
            self.events.push(StoreEvent::NoResponse {
                uuid: uuid.clone(),
                node: n,
                at_ms: now_ms(),
            });
        }
        // The request id too: a client that gave up before the accept knows only that.
        info!(self.log, "request dispatched"; "uuid" => &uuid, "topic" => &job.request.topic,
            "request" => request_id.as_deref().unwrap_or("unsigned"),
            "client" => client.as_ref().map(|k| k.to_string()).unwrap_or_else(|| "unsigned".into()),
            "cmd" => &job.request.cmd, "service" => &job.request.service,
            "expected" => route.expected.len(), "unregistered" => route.unregistered,
            "not_back" => route.late.len());
        self.metrics
            .request(if route.expected.is_empty() && route.unregistered == 0 {
                outcome::NO_TARGET
            } else {
                outcome::ACCEPTED
            });
        self.jobs.insert(uuid, job);
        if let Some(id) = request_id {
            self.answered.insert(id, (Instant::now(), accepted.clone()));
        }
        Ok(accepted)
    }
}

/// One result to an attached client: `[envelope.., uuid, result]`, as the
/// result publisher sends `[uuid, result]`.
fn send_attached(
    frontend: &zmq::Socket,
    log: &slog::Logger,
    envelope: &[Vec<u8>],
    uuid: &str,
    frame: &[u8],
) {
    let mut out: Vec<&[u8]> = envelope.iter().map(Vec::as_slice).collect();
    out.push(uuid.as_bytes());
    out.push(frame);
    if let Err(e) = frontend.send_multipart(out, zmq::DONTWAIT) {
        warn!(log, "cannot send a result to an attached client"; "uuid" => uuid, "error" => %e);
    }
}
