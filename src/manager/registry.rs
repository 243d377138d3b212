//! The manager's view of its agents: who is up, what they answer to, which
//! of them a request targets, and which are known but down (lost, stopped,
//! or not back since the manager restarted): those stay in a request's
//! expected set until an operator forgets them or `forget_after` passes.

use crate::clock::now_ms;
use crate::protocol::mgmt::{AgentInfo, AgentState};
use crate::protocol::{Announce, AnnounceKind};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Heartbeats an agent may miss before it counts as lost (when the transport
/// did not already tell us).
const MISSED_BEATS: u32 = 3;
/// Heartbeats an agent with a live connection of its own (secure mode) may
/// miss: libzmq's ZMTP heartbeats and disconnect notice already tell a
/// dead connection within 15 s, so a manager too busy to read heartbeats in
/// time (a 10,000-agent cold start) does not take live agents down, which
/// made them all announce again and fed the backlog (issue 12). A hung agent
/// whose connection stays up is still taken down after this long.
const LINKED_SILENCE: Duration = Duration::from_secs(60);
/// How long an agent that went away stays known when the config says
/// nothing (`forget_after`): a week, like Salt's minion data cache.
pub const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a node known from before a manager restart has no connection yet.
pub const NOT_BACK: &str = "not back since the manager restarted";

/// How long a refusal for clock skew is shown after the last one (the agent
/// is refused at each heartbeat, so a fresh one comes while it runs).
const SKEW_SHOWN: Duration = Duration::from_secs(600);

/// The last announcement of an accepted node refused for its clock.
#[derive(Debug, Clone)]
struct Skewed {
    skew_s: i64,
    at: Instant,
    at_ms: u64,
}

/// One agent as last heard from: what `manager.agents` lists (its state is
/// never `connecting` here; that is derived from presence when listed), and
/// when it is due to be heard from again.
#[derive(Debug, Clone)]
pub struct AgentEntry {
    pub info: AgentInfo,
    last_seen: Instant,
    interval: Duration,
    /// Since when (unix ms) and why it is down; `None` while up.
    pub down: Option<Down>,
}

/// When and why a known agent went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Down {
    pub since_ms: u64,
    pub why: String,
}

impl AgentEntry {
    /// The entry of a node known from the journal (see [`super::journal`]).
    pub fn restored(info: AgentInfo, interval_ms: u64, down: Down) -> AgentEntry {
        // Its age counts from when it was last seen, as before the restart.
        let age = Duration::from_millis(now_ms().saturating_sub(info.last_seen_ms));
        AgentEntry {
            info,
            last_seen: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            interval: Duration::from_millis(interval_ms.clamp(100, 600_000)),
            down: Some(down),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Why a request is not sent to this down agent, as its `no_response`
    /// says: `lost since 2026-12-01 06:10:03 UTC (the agent's connection
    /// dropped)`, `stopped at ...`, `not back since the manager restarted at ...`.
    pub fn down_reason(&self) -> Option<String> {
        let d = self.down.as_ref()?;
        Some(if d.why == NOT_BACK {
            format!("{NOT_BACK} at {}", utc(d.since_ms))
        } else if self.state == AgentState::Stopped {
            format!("stopped at {} ({})", utc(d.since_ms), d.why)
        } else {
            format!("lost since {} ({})", utc(d.since_ms), d.why)
        })
    }
}

/// A unix time in ms as `2026-12-01 06:10:03 UTC`.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl std::ops::Deref for AgentEntry {
    type Target = AgentInfo;
    fn deref(&self) -> &AgentInfo {
        &self.info
    }
}

/// A change the manager must act on (fail the agent's pending requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    pub node: String,
    pub why: &'static str,
}

pub struct Registry {
    agents: BTreeMap<String, AgentEntry>,
    /// How long an agent that went away stays known (`forget_after`).
    forget_after: Duration,
    /// Whether something a restart must know changed since the last
    /// [`Registry::take_changed`] (a node, its key, topics or state).
    changed: bool,
    /// instance -> node, for presence unsubscriptions.
    instances: HashMap<String, String>,
    /// Instances whose presence subscription is in place. Subscriptions travel
    /// in order, so the agent's topic subscriptions are in place too: only then
    /// can a published request reach it.
    /// With the node name the presence token was signed for (None: unsigned,
    /// 0.1-compatible mode), which must be the node that announced the instance.
    present: HashMap<String, Option<String>>,
    /// Nodes with an accepted key whose last announcement was refused for
    /// their clock, until they are heard from again.
    skewed: BTreeMap<String, Skewed>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(FORGET_AFTER)
    }
}

impl Registry {
    pub fn new(forget_after: Duration) -> Registry {
        Registry {
            agents: BTreeMap::new(),
            forget_after,
            changed: false,
            instances: HashMap::new(),
            present: HashMap::new(),
            skewed: BTreeMap::new(),
        }
    }

    /// Nodes known from before a restart (the journal): each is down, with
    /// the reason it had or, if it was up, [`NOT_BACK`] since `restart_ms`.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = AgentEntry>) {
        for e in entries {
            if e.last_seen.elapsed() > self.forget_after {
                continue;
            }
            self.instances.insert(e.instance.clone(), e.node.clone());
            self.agents.insert(e.node.clone(), e);
        }
    }

    /// Whether the registry changed in a way a restart must know; clears it.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Forget a node the operator removed (`mgmt agents forget`): it is no
    /// longer expected to answer. False if it is unknown.
    pub fn forget(&mut self, node: &str) -> bool {
        let Some(e) = self.agents.remove(node) else {
            return false;
        };
        // Its presence (if its connection is still there) stays: the
        // transport's to end, and it makes the agent a target again at its
        // next heartbeat.
        self.instances.remove(&e.instance);
        self.skewed.remove(node);
        self.changed = true;
        true
    }

    /// Record an announcement; returns a departure when it was a goodbye.
    pub fn announce(&mut self, a: &Announce, key: Option<String>) -> Option<Departure> {
        self.skewed.remove(&a.node);
        let state = match a.kind {
            AnnounceKind::Bye => AgentState::Stopped,
            _ => AgentState::Up,
        };
        // A restarted agent (new instance) replaces the old entry.
        if let Some(old) = self.agents.get(&a.node) {
            if old.instance != a.instance {
                self.instances.remove(&old.instance);
            }
        }
        self.instances.insert(a.instance.clone(), a.node.clone());
        let before = self.agents.get(&a.node);
        let was_up = before.is_some_and(|e| e.state == AgentState::Up);
        self.changed |= before.is_none_or(|e| {
            e.state != state || e.instance != a.instance || e.topics != a.topics || e.key != key
        });
        let down = match state {
            AgentState::Stopped => Some(Down {
                since_ms: now_ms(),
                why: "it said goodbye".to_owned(),
            }),
            _ => None,
        };
        self.agents.insert(
            a.node.clone(),
            AgentEntry {
                info: AgentInfo {
                    node: a.node.clone(),
                    instance: a.instance.clone(),
                    system: a.system.clone(),
                    release: a.release.clone(),
                    os_version: a.os_version.clone(),
                    topics: a.topics.clone(),
                    agent_version: a.agent_version.clone(),
                    started_ms: a.started_ms,
                    last_seen_ms: now_ms(),
                    state,
                    running: a.running,
                    key,
                    skew_s: None,
                },
                last_seen: Instant::now(),
                interval: Duration::from_millis(a.interval_ms.clamp(100, 600_000)),
                down,
            },
        );
        (state == AgentState::Stopped && was_up).then(|| Departure {
            node: a.node.clone(),
            why: "the agent stopped",
        })
    }

    /// An announcement signed by the accepted key of `node` was refused: its
    /// clock is `skew_s` seconds ahead (+) or behind (-).
    pub fn refused_for_skew(&mut self, node: &str, skew_s: i64) {
        self.skewed.insert(
            node.to_owned(),
            Skewed {
                skew_s,
                at: Instant::now(),
                at_ms: now_ms(),
            },
        );
    }

    /// How far off the clock of `node` is, when its announcements are being
    /// refused for it (and it has not been heard from since).
    pub fn skew_of(&self, node: &str) -> Option<i64> {
        let s = self.skewed.get(node)?;
        let later = self
            .agents
            .get(node)
            .is_none_or(|e| e.last_seen < s.at || e.state != AgentState::Up);
        (later && s.at.elapsed() < SKEW_SHOWN).then_some(s.skew_s)
    }

    /// Nodes refused for their clock that have no entry of their own, as
    /// `manager.agents` lists them.
    pub fn skewed_unlisted(&self) -> Vec<AgentInfo> {
        self.skewed
            .iter()
            .filter(|(node, s)| !self.agents.contains_key(*node) && s.at.elapsed() < SKEW_SHOWN)
            .map(|(node, s)| AgentInfo {
                node: node.clone(),
                instance: String::new(),
                system: String::new(),
                release: String::new(),
                os_version: String::new(),
                topics: Vec::new(),
                agent_version: String::new(),
                started_ms: 0,
                last_seen_ms: s.at_ms,
                state: AgentState::ClockSkew,
                running: 0,
                key: None,
                skew_s: Some(s.skew_s),
            })
            .collect()
    }

    /// The agent's presence subscription arrived (it may precede its hello).
    pub fn connected(&mut self, instance: &str, node: Option<String>) {
        self.present.insert(instance.to_owned(), node);
    }

    /// The transport says this instance's connection is gone.
    pub fn disconnected(&mut self, instance: &str) -> Option<Departure> {
        self.present.remove(instance);
        let node = self.instances.get(instance)?;
        let entry = self.agents.get_mut(node)?;
        if entry.instance != instance || entry.state != AgentState::Up {
            return None;
        }
        let why = "the agent's connection dropped";
        entry.info.state = AgentState::Lost;
        entry.down = Some(Down {
            since_ms: now_ms(),
            why: why.to_owned(),
        });
        self.changed = true;
        Some(Departure {
            node: node.clone(),
            why,
        })
    }

    /// Forget the agents whose key `trusted` no longer admits (rejected,
    /// deleted, or replaced by another key of the node with `keys accept
    /// --force`): requests stop going to their connection at once, instead of
    /// at their next refused heartbeat. Forgotten rather than marked down:
    /// requests are published to every known node's private topic.
    pub fn revoke(&mut self, trusted: impl Fn(&str) -> bool) -> Vec<Departure> {
        let gone: Vec<String> = self
            .agents
            .values()
            .filter(|e| e.key.as_deref().is_some_and(|k| !trusted(k)))
            .map(|e| e.node.clone())
            .collect();
        for node in &gone {
            if let Some(e) = self.agents.remove(node) {
                self.instances.remove(&e.instance);
                self.present.remove(&e.instance);
                self.changed = true;
            }
        }
        gone.into_iter()
            .map(|node| Departure {
                node,
                why: "its key is no longer accepted",
            })
            .collect()
    }

    /// Mark agents that stopped heartbeating; forget long-gone ones.
    /// `linked(node, instance)`: that instance holds a live connection of
    /// its own (secure mode), and gets [`LINKED_SILENCE`].
    pub fn sweep(&mut self, linked: impl Fn(&str, &str) -> bool) -> Vec<Departure> {
        self.skewed.retain(|_, s| s.at.elapsed() < SKEW_SHOWN);
        let mut gone = Vec::new();
        for e in self.agents.values_mut() {
            let silent = e.last_seen.elapsed();
            if e.state == AgentState::Up
                && silent > e.interval * MISSED_BEATS
                && (silent > LINKED_SILENCE || !linked(&e.node, &e.instance))
            {
                let why = "the agent stopped sending heartbeats";
                e.info.state = AgentState::Lost;
                e.down = Some(Down {
                    since_ms: now_ms(),
                    why: why.to_owned(),
                });
                self.changed = true;
                gone.push(Departure {
                    node: e.node.clone(),
                    why,
                });
            }
        }
        let stale: Vec<String> = self
            .agents
            .values()
            .filter(|e| e.state != AgentState::Up && e.last_seen.elapsed() > self.forget_after)
            .map(|e| e.node.clone())
            .collect();
        for node in stale {
            if let Some(e) = self.agents.remove(&node) {
                self.instances.remove(&e.instance);
                self.present.remove(&e.instance);
                self.changed = true;
            }
        }
        gone
    }

    pub fn get(&self, node: &str) -> Option<&AgentEntry> {
        self.agents.get(node)
    }

    /// Up and reachable: announced, heartbeating, and subscribed.
    pub fn is_up(&self, node: &str) -> bool {
        self.agents.get(node).is_some_and(|e| self.reachable(e))
    }

    fn reachable(&self, e: &AgentEntry) -> bool {
        e.state == AgentState::Up
            && match self.present.get(&e.instance) {
                Some(Some(node)) => node == &e.node,
                Some(None) => e.key.is_none(),
                None => false,
            }
    }

    /// Up agents that answer `topic`, narrowed to `glob` when given.
    pub fn matching(&self, topic: &str, glob: Option<&globset::GlobMatcher>) -> Vec<String> {
        self.agents
            .values()
            .filter(|e| self.reachable(e))
            .filter(|e| e.topics.iter().any(|t| t == topic))
            .filter(|e| glob.is_none_or(|g| g.is_match(&e.node)))
            .map(|e| e.node.clone())
            .collect()
    }

    /// Known agents that answer `topic` (narrowed to `glob`) but are down:
    /// lost, stopped, or not back since a restart. They are expected to
    /// answer, and answered for when they cannot be sent the request.
    /// Announced agents whose subscriptions are not in place yet are not
    /// among them (they are up, a moment from reachable).
    pub fn down_matching(&self, topic: &str, glob: Option<&globset::GlobMatcher>) -> Vec<String> {
        self.agents
            .values()
            .filter(|e| e.state != AgentState::Up)
            .filter(|e| e.topics.iter().any(|t| t == topic))
            .filter(|e| glob.is_none_or(|g| g.is_match(&e.node)))
            .map(|e| e.node.clone())
            .collect()
    }

    /// Agents that answer `topic` (narrowed to `glob`) that have announced
    /// themselves but whose presence is not in place yet: a moment from
    /// reachable (after a manager restart, a whole fleet is).
    pub fn connecting_matching(
        &self,
        topic: &str,
        glob: Option<&globset::GlobMatcher>,
    ) -> Vec<String> {
        self.agents
            .values()
            .filter(|e| e.state == AgentState::Up && !self.reachable(e))
            .filter(|e| e.topics.iter().any(|t| t == topic))
            .filter(|e| glob.is_none_or(|g| g.is_match(&e.node)))
            .map(|e| e.node.clone())
            .collect()
    }

    /// Whether `node` has announced itself but its presence is not in place.
    pub fn connecting(&self, node: &str) -> bool {
        self.agents
            .get(node)
            .is_some_and(|e| e.state == AgentState::Up && !self.reachable(e))
    }

    /// Whether `node` is known from before the restart and not back yet.
    pub fn not_back(&self, node: &str) -> bool {
        self.agents.get(node).is_some_and(|e| {
            e.state != AgentState::Up && e.down.as_ref().is_some_and(|d| d.why == NOT_BACK)
        })
    }

    /// How many registered agents still connected answer `topic` (to tell
    /// 0.1 subscribers apart): up ones, and lost ones whose connection (and
    /// so their subscriptions) is still there, which are expected by name.
    pub fn count_with_topic(&self, topic: &str) -> usize {
        self.agents
            .values()
            .filter(|e| {
                self.present.contains_key(&e.instance) && e.topics.iter().any(|t| t == topic)
            })
            .count()
    }

    /// Known topics and node names close to `topic` (a typo, or 0.1's prefix
    /// habit: `web` for `web1`), closest first, at most five.
    pub fn near(&self, topic: &str) -> Vec<String> {
        let mut names: Vec<&str> = self
            .agents
            .values()
            .flat_map(|e| e.topics.iter().map(String::as_str).chain([e.node.as_str()]))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut close: Vec<(usize, &str)> = names
            .into_iter()
            .filter(|n| *n != topic)
            .filter_map(|n| {
                let d = strsim::damerau_levenshtein(n, topic);
                let prefix = n.starts_with(topic) || topic.starts_with(n);
                (d <= 2 || (prefix && !topic.is_empty())).then_some((d, n))
            })
            .collect();
        close.sort();
        close
            .into_iter()
            .take(5)
            .map(|(_, n)| n.to_owned())
            .collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = &AgentEntry> {
        self.agents.values()
    }

    pub fn up_count(&self) -> usize {
        self.agents.values().filter(|e| self.reachable(e)).count()
    }

    /// The state `manager.agents` lists for `e`: announced but not reachable yet is `connecting`.
    pub fn listed_state(&self, e: &AgentEntry) -> AgentState {
        if self.skew_of(&e.node).is_some() {
            AgentState::ClockSkew
        } else if e.state == AgentState::Up && !self.reachable(e) {
            AgentState::Connecting
        } else {
            e.state
        }
    }

    /// How many agents are in each state (every state, zeros included).
    pub fn count_by_state(&self) -> [(&'static str, usize); 5] {
        let mut counts = [
            AgentState::Up,
            AgentState::Connecting,
            AgentState::ClockSkew,
            AgentState::Lost,
            AgentState::Stopped,
        ]
        .map(|s| (s.as_str(), 0));
        let listed = self.agents.values().map(|e| self.listed_state(e));
        let unlisted = self.skewed_unlisted().into_iter().map(|a| a.state);
        for state in listed.chain(unlisted) {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == state.as_str()) {
                c.1 += 1;
            }
        }
        counts
    }
}

/// A hello of `node` (instance `instance`) on `topics`, for tests.
#[cfg(test)]
pub(crate) fn hello(node: &str, instance: &str, topics: &[&str]) -> Announce {
    Announce {
        kind: AnnounceKind::Hello,
        v: 2,
        node: node.into(),
        instance: instance.into(),
        system: "Linux".into(),
        release: "r".into(),
        os_version: "v".into(),
        topics: topics.iter().map(|s| s.to_string()).collect(),
        agent_version: "0.2.0".into(),
        started_ms: 0,
        interval_ms: 100,
        running: 0,
        auth: None,
        uuid: crate::protocol::ANNOUNCE_UUID.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_typos_and_prefixes_closest_first() {
        let mut r = Registry::default();
        for (node, topics) in [
            ("web1", &["any", "web", "web1"][..]),
            ("db1", &["any", "db", "db1"]),
        ] {
            r.connected(&format!("i-{node}"), Some(node.to_owned()));
            r.announce(&hello(node, &format!("i-{node}"), topics), None);
        }
        assert_eq!(r.near("webb"), ["web", "web1"]);
        assert_eq!(r.near("db2"), ["db", "db1"]);
        assert!(r.near("mail").is_empty());
    }

    #[test]
    fn matching_is_exact_and_globs_narrow() {
        let mut r = Registry::default();
        for i in ["a", "b", "c"] {
            r.connected(i, None);
        }
        r.announce(&hello("web1", "a", &["any", "Linux", "web1", "web"]), None);
        r.announce(
            &hello("web10", "b", &["any", "Linux", "web10", "web"]),
            None,
        );
        r.announce(&hello("db1", "c", &["any", "Linux", "db1"]), None);
        assert_eq!(r.matching("web1", None), ["web1"]);
        assert_eq!(r.matching("web", None), ["web1", "web10"]);
        assert!(r.matching("we", None).is_empty());
        let g = globset::Glob::new("web1*").unwrap().compile_matcher();
        assert_eq!(r.matching("any", Some(&g)), ["web1", "web10"]);
        assert_eq!(r.count_with_topic("Linux"), 3);
    }

    #[test]
    fn disconnect_bye_and_missed_heartbeats_take_agents_down() {
        let mut r = Registry::default();
        for i in ["i1", "i2", "i3", "i9"] {
            r.connected(i, None);
        }
        r.announce(&hello("a", "i1", &["any"]), None);
        r.announce(&hello("b", "i2", &["any"]), None);
        r.announce(&hello("c", "i3", &["any"]), None);
        assert_eq!(r.disconnected("i1").unwrap().node, "a");
        assert!(r.disconnected("i1").is_none(), "reported once");
        let mut bye = hello("b", "i2", &["any"]);
        bye.kind = AnnounceKind::Bye;
        assert_eq!(r.announce(&bye, None).unwrap().node, "b");
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(
            r.sweep(|_, _| false),
            [Departure {
                node: "c".into(),
                why: "the agent stopped sending heartbeats"
            }]
        );
        assert_eq!(r.up_count(), 0);
        // Announced but not subscribed yet: not a target.
        r.announce(&hello("d", "i4", &["any"]), None);
        assert!(r.matching("any", None).is_empty());
        r.connected("i4", None);
        assert_eq!(r.matching("any", None), ["d"]);
        // A new instance of the same node comes back up; the old instance's disconnect is ignored.
        r.announce(&hello("a", "i9", &["any"]), None);
        assert!(r.disconnected("i1").is_none());
        assert!(r.is_up("a"));
    }

    #[test]
    fn agents_are_counted_by_the_state_they_are_listed_in() {
        let mut r = Registry::default();
        r.connected("i1", None);
        r.announce(&hello("up", "i1", &["any"]), None);
        r.announce(&hello("announced", "i2", &["any"]), None);
        r.connected("i3", None);
        r.announce(&hello("gone", "i3", &["any"]), None);
        r.disconnected("i3");
        let mut bye = hello("left", "i4", &["any"]);
        bye.kind = AnnounceKind::Bye;
        r.announce(&bye, None);
        assert_eq!(
            r.count_by_state(),
            [
                ("up", 1),
                ("connecting", 1),
                ("clock_skew", 0),
                ("lost", 1),
                ("stopped", 1)
            ]
        );
    }

    #[test]
    fn agents_whose_key_is_revoked_go_down() {
        let mut r = Registry::default();
        r.announce(&hello("web1", "i1", &["web1"]), Some("key-a".into()));
        r.announce(&hello("web2", "i2", &["web2"]), Some("key-b".into()));
        r.announce(&hello("old", "i3", &["old"]), None);
        for (i, n) in [("i1", "web1"), ("i2", "web2")] {
            r.connected(i, Some(n.into()));
        }
        r.connected("i3", None);
        let gone = r.revoke(|k| k == "key-b");
        assert_eq!(
            gone,
            [Departure {
                node: "web1".into(),
                why: "its key is no longer accepted"
            }]
        );
        assert!(r.get("web1").is_none() && r.is_up("web2") && r.is_up("old"));
        assert!(r.revoke(|_| false).iter().all(|d| d.node == "web2"));
    }
}
