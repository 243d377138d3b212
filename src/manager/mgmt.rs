//! The manager's management commands: status, the agent registry, the job
//! store's jobs, and a shutdown the gate must allow.

use super::{peers, Manager};
use crate::protocol::mgmt::{self as m, AgentInfo, AgentState, ManagerStatus};
use crate::protocol::{self as p, MgmtReply, MgmtRequest};
use slog::{info, warn};

impl Manager<'_> {
    pub(super) fn on_mgmt(&mut self, frames: Vec<Vec<u8>>) {
        let reply = m::answer(&frames, |req| self.mgmt_command(req));
        if let Err(e) = self.s.mgmt.send(reply, 0) {
            warn!(self.log, "cannot answer management request"; "error" => %e);
        }
    }

    fn mgmt_command(&mut self, req: &MgmtRequest) -> MgmtReply {
        if matches!(
            req.cmd.as_str(),
            p::MANAGER_JOBS | p::MANAGER_JOB | p::MANAGER_HISTORY
        ) {
            // The store shows every result received so far.
            self.write_events();
        }
        match req.cmd.as_str() {
            p::MANAGER_STATUS => MgmtReply::with("Service Manager Status", &self.status()),
            p::MANAGER_SHUTDOWN => {
                // On CURVE the connection's key decides (a captured request cannot
                // be replayed into another session); on plaintext, the signature.
                let allowed = match &self.peers {
                    Some(peers) if peers.right(&self.peer) == Some(peers::Right::Admin) => Ok(()),
                    Some(_) => Err(m::MgmtRefusal::NotAdmin),
                    None => self.gate.check_mgmt(req),
                };
                match &allowed {
                    Ok(()) => {
                        info!(self.log, "shutdown requested on the management socket");
                        self.stop = true;
                    }
                    Err(why) => {
                        self.metrics.refusal(crate::metrics::refused::SHUTDOWN);
                        warn!(self.log, "shutdown refused"; "why" => %why)
                    }
                }
                MgmtReply::shutdown(&allowed, "Service Manager is shutting down")
            }
            p::MANAGER_AGENTS => MgmtReply::with("Service Manager Agents", &self.agents()),
            p::MANAGER_FORGET => self.forget(req),
            p::MANAGER_JOBS => match self.readable_store() {
                Err(why) => MgmtReply::error(why),
                Ok(store) => {
                    let limit = req.limit.unwrap_or(m::JOBS_PAGE).min(m::JOBS_PAGE_MAX);
                    match store.list_page(req.offset.unwrap_or(0), limit) {
                        Ok((list, next)) => MgmtReply {
                            next,
                            ..MgmtReply::with("Service Manager Jobs", &list)
                        },
                        Err(e) => MgmtReply::error(format!("cannot read the job store: {e:#}")),
                    }
                }
            },
            p::MANAGER_HISTORY => match self.readable_store() {
                Err(why) => MgmtReply::error(why),
                Ok(store) => {
                    let filter = m::HistoryFilter {
                        node: req.node.clone(),
                        service: req.service.clone(),
                        since_ms: req.since_ms,
                        client: req.client.clone(),
                    };
                    let limit = req
                        .limit
                        .unwrap_or(m::HISTORY_PAGE)
                        .min(m::HISTORY_PAGE_MAX);
                    match store.history(&filter, req.offset.unwrap_or(0), limit) {
                        Ok((list, next)) => MgmtReply {
                            next,
                            ..MgmtReply::with("Service Manager History", &list)
                        },
                        Err(e) => MgmtReply::error(format!("cannot read the job store: {e:#}")),
                    }
                }
            },
            p::MANAGER_JOB => {
                let Some(id) = &req.uuid else {
                    return MgmtReply::error("manager.job needs \"uuid\"");
                };
                let store = match self.readable_store() {
                    Ok(store) => store,
                    Err(why) => return MgmtReply::error(why),
                };
                let limit = req
                    .limit
                    .unwrap_or(m::RESULTS_PAGE)
                    .min(m::RESULTS_PAGE_MAX);
                match store.get_page(id, req.offset.unwrap_or(0), limit, m::PAGE_BYTES) {
                    Ok(Some((record, next))) => MgmtReply {
                        next,
                        ..MgmtReply::with("Service Manager Job", &record)
                    },
                    Ok(None) => MgmtReply::error(format!("no job {id} in the job store")),
                    Err(e) => MgmtReply::error(format!("cannot read the job store: {e:#}")),
                }
            }
            other => MgmtReply::unknown(
                other,
                "manager",
                &[
                    p::MANAGER_STATUS,
                    p::MANAGER_SHUTDOWN,
                    p::MANAGER_AGENTS,
                    p::MANAGER_JOBS,
                    p::MANAGER_JOB,
                    p::MANAGER_FORGET,
                    p::MANAGER_HISTORY,
                ],
            ),
        }
    }

    /// `manager.forget`: an admin removes a lost or stopped agent, so that
    /// requests to its topics stop expecting it (until it comes back).
    fn forget(&mut self, req: &MgmtRequest) -> MgmtReply {
        let allowed = match &self.peers {
            Some(peers) if peers.right(&self.peer) == Some(peers::Right::Admin) => Ok(()),
            Some(_) => Err(m::MgmtRefusal::NotAdmin),
            None => self.gate.check_mgmt(req),
        };
        if let Err(why) = allowed {
            warn!(self.log, "forget refused"; "why" => %why);
            let why = match why {
                m::MgmtRefusal::NotAdmin => "this key may read but not change the registry; \
                    grant it with mgmt_admin_keys in the manager's config"
                    .to_owned(),
                other => other.to_string(),
            };
            return MgmtReply::error(format!("forget refused: {why}"));
        }
        let Some(node) = &req.node else {
            return MgmtReply::error(
                "manager.forget needs \"node\" (service-mgr mgmt agents forget NODE)",
            );
        };
        if self.registry.is_up(node) {
            return MgmtReply::error(format!(
                "agent {node:?} is up; forget removes agents that are gone (lost or stopped): stop it first"
            ));
        }
        if !self.registry.forget(node) {
            return MgmtReply::error(format!(
                "no agent {node:?} is known to the manager (service-mgr mgmt agents lists them)"
            ));
        }
        info!(self.log, "agent forgotten on request: no longer expected to answer"; "node" => node);
        MgmtReply::ok(&format!("Forgot agent {node}"), None)
    }

    fn status(&self) -> ManagerStatus {
        ManagerStatus {
            status: "running".into(),
            uname: self.host.uname(),
            frontend_endpoint: self.config.frontend_endpoint.clone(),
            backend_endpoint: self.config.backend_endpoint.clone(),
            sink_endpoint: self.config.sink_endpoint.clone(),
            mgmt_endpoint: self.config.mgmt_endpoint.clone(),
            result_publisher_port: self.bound.result_publisher_port,
            bound: self.bound.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            agents_up: self.registry.up_count(),
            allow_unsigned: self.gate.allow_unsigned,
            jobs_in_memory: self.jobs.len(),
            job_store_warning: self.store_status(),
            key_sync_warning: self
                .key_sync
                .as_ref()
                .and_then(|w| w.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(t, n)| (t.clone(), *n))
                .collect(),
        }
    }

    fn agents(&self) -> Vec<AgentInfo> {
        let mut agents: Vec<AgentInfo> = self
            .registry
            .entries()
            .map(|e| {
                let mut info = e.info.clone();
                // Announced but its subscriptions not yet in place: not a target yet.
                info.state = self.registry.listed_state(e);
                info.skew_s = self.registry.skew_of(&e.node);
                info
            })
            .collect();
        // Accepted agents refused for their clock, never admitted.
        agents.extend(self.registry.skewed_unlisted());
        // Agents whose keys wait for `mgmt keys accept`: the reason a new
        // agent is not answering, shown where the operator looks for it.
        agents.extend(self.gate.pending_agents().into_iter().map(|key| AgentInfo {
            node: key.name().to_owned(),
            instance: String::new(),
            system: String::new(),
            release: String::new(),
            os_version: String::new(),
            topics: Vec::new(),
            agent_version: String::new(),
            started_ms: 0,
            last_seen_ms: 0,
            state: AgentState::Pending,
            running: 0,
            key: Some(key.to_string()),
            skew_s: None,
        }));
        agents
    }
}
