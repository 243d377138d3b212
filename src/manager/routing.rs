//! The routing decision, as a pure function of the request and the registry:
//! whether the request is valid, which nodes must answer, where it is
//! published, and which of them are answered for at once. No sockets, no
//! clock, no state: [`route`] is tested by tables below.

use super::registry::Registry;
use crate::protocol::{self as p, ServiceRequest};
use std::collections::{BTreeSet, HashMap};

/// What the manager does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Nodes expected to answer, sorted.
    pub expected: Vec<String>,
    /// Subscribers to the topic that are not registered agents (0.1 agents,
    /// only counted for a plain broadcast in 0.1-compatible mode).
    pub unregistered: usize,
    /// Topics to publish the request on (without the terminator).
    pub topics: Vec<String>,
    /// Expected nodes that will not get the request, with the reason they are
    /// answered for at once (`no_response`): known but down (lost, stopped),
    /// or not an admitted agent.
    pub unreachable: Vec<(String, String)>,
    /// Expected nodes known from before a manager restart and not back yet,
    /// within the startup grace: sent the request when they come back.
    pub late: Vec<String>,
}

/// Why an expected node was not sent the request.
pub const NOT_CONNECTED: &str = "the agent is not connected to the manager";

pub const NO_SUCH_AGENT: &str =
    "no such agent: none by that name is connected with an accepted key";

/// Why a node whose key is accepted but whose announcements are refused for
/// its clock was not sent the request.
pub fn skewed(skew_s: i64) -> String {
    format!(
        "{}: its announcements are refused; fix its clock (NTP)",
        crate::protocol::mgmt::clock_skew(skew_s)
    )
}

/// Why a request cannot be routed (its fields, checked before anything is
/// published); the text is the error reply the client sees.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("topic {0:?} is not a valid topic (printable, no blanks or commas, 1 to 255 bytes)")]
    BadTopic(String),
    #[error(transparent)]
    BadName(#[from] p::NameError),
    #[error("glob {glob:?} is not a valid pattern: {source}")]
    BadGlob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("node {0:?} is not a valid node name")]
    BadNode(String),
}

impl RouteError {
    /// One short word for counting refused requests.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::BadTopic(_) => "bad_topic",
            RouteError::BadName(e) => e.reason(),
            RouteError::BadGlob { .. } => "bad_glob",
            RouteError::BadNode(_) => "bad_node",
        }
    }
}

/// Check a request's fields and decide who must answer (the gate has
/// already passed it). `secure` is the opposite of `allow_unsigned`;
/// `subscriptions` counts the backend's subscribers per topic; `starting`
/// says the manager is within its startup grace, when nodes not back since
/// the restart are still awaited.
pub fn route(
    req: &ServiceRequest,
    registry: &Registry,
    subscriptions: &HashMap<String, usize>,
    secure: bool,
    starting: bool,
) -> Result<Route, RouteError> {
    if !p::valid_topic(&req.topic) {
        return Err(RouteError::BadTopic(req.topic.clone()));
    }
    p::check_service_name(&req.service)?;
    p::check_command_word(&req.cmd)?;
    let glob = match &req.glob {
        Some(g) => Some(
            globset::Glob::new(g)
                .map_err(|source| RouteError::BadGlob {
                    glob: g.clone(),
                    source,
                })?
                .compile_matcher(),
        ),
        None => None,
    };
    if let Some(nodes) = &req.nodes {
        if let Some(bad) = nodes.iter().find(|n| !p::valid_topic(n)) {
            return Err(RouteError::BadNode(bad.clone()));
        }
    }
    // Who must answer: every known agent on the topic, narrowed by the glob,
    // up or down (a lost or stopped one is never silently left out). An
    // explicit node list is taken as is, less known nodes outside the topic:
    // unknown nodes are asked too (they may be 0.1 agents) and reported.
    let narrowed = req.nodes.is_some() || req.glob.is_some();
    let expected: BTreeSet<String> = match &req.nodes {
        None => registry
            .matching(&req.topic, glob.as_ref())
            .into_iter()
            .chain(registry.down_matching(&req.topic, glob.as_ref()))
            // Right after a restart, agents that announced themselves before
            // their subscriptions arrived are awaited too.
            .chain(
                starting
                    .then(|| registry.connecting_matching(&req.topic, glob.as_ref()))
                    .into_iter()
                    .flatten(),
            )
            .collect(),
        Some(nodes) => nodes
            .iter()
            .filter(|n| match registry.get(n) {
                None => true,
                Some(e) => {
                    e.topics.contains(&req.topic)
                        && glob.as_ref().is_none_or(|g| g.is_match(n.as_str()))
                }
            })
            .cloned()
            .collect(),
    };
    let expected: Vec<String> = expected.into_iter().collect();
    let unregistered = if narrowed || secure {
        0
    } else {
        let subscribed = subscriptions.get(&req.topic).copied().unwrap_or(0);
        subscribed.saturating_sub(registry.count_with_topic(&req.topic))
    };
    // Not back since a restart (or back but not reachable yet), within the
    // grace: awaited, sent the request when they are reachable.
    let late: Vec<String> = expected
        .iter()
        .filter(|n| {
            starting && !registry.is_up(n) && (registry.not_back(n) || registry.connecting(n))
        })
        .cloned()
        .collect();
    // Secure mode: each up agent on its private topic. Otherwise narrowed
    // requests go to each node's own topic and the rest is one broadcast.
    let topics = if secure {
        expected
            .iter()
            .filter(|n| registry.is_up(n))
            .filter_map(|n| registry.get(n))
            .map(|e| p::private_topic(&e.node, &e.instance))
            .collect()
    } else if narrowed {
        expected
            .iter()
            .filter(|n| late.binary_search(n).is_err())
            .cloned()
            .collect()
    } else {
        vec![req.topic.clone()]
    };
    // Known but down, or (secure mode) not an admitted agent at all: they
    // are not sent the request, so they are answered for at once.
    let unreachable = expected
        .iter()
        .filter(|n| !registry.is_up(n) && (registry.get(n).is_some() || secure))
        .filter(|n| late.binary_search(n).is_err())
        .map(|n| {
            let entry = registry.get(n);
            let why = match (registry.skew_of(n), entry) {
                (Some(skew_s), _) => skewed(skew_s),
                (None, Some(e)) => e.down_reason().unwrap_or_else(|| NOT_CONNECTED.to_owned()),
                (None, None) => NO_SUCH_AGENT.to_owned(),
            };
            (n.clone(), why)
        })
        .collect();
    Ok(Route {
        expected,
        unregistered,
        topics,
        unreachable,
        late,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::registry::hello;

    /// web1 and web2 up on `web`, db1 up, old1 announced but its connection gone.
    fn fleet() -> Registry {
        let mut r = Registry::default();
        for (node, topics) in [
            ("web1", &["any", "web", "web1"][..]),
            ("web2", &["any", "web", "web2"]),
            ("db1", &["any", "db", "db1"]),
            ("old1", &["any", "web", "old1"]),
        ] {
            r.connected(&format!("i-{node}"), Some(node.to_owned()));
            r.announce(&hello(node, &format!("i-{node}"), topics), None);
        }
        r.disconnected("i-old1");
        r
    }

    fn req(topic: &str, nodes: Option<&[&str]>, glob: Option<&str>) -> ServiceRequest {
        let mut r = ServiceRequest::new("status", "nginx", topic);
        r.nodes = nodes.map(|n| n.iter().map(|s| s.to_string()).collect());
        r.glob = glob.map(str::to_owned);
        r
    }

    #[test]
    fn who_must_answer_and_where_it_is_published() {
        struct Case {
            name: &'static str,
            req: ServiceRequest,
            secure: bool,
            expected: &'static [&'static str],
            topics: &'static [&'static str],
            unreachable: &'static [(&'static str, &'static str)],
        }
        let cases = [
            Case {
                name: "broadcast, 0.1-compatible: one publish on the topic, the lost node expected",
                req: req("web", None, None),
                secure: false,
                expected: &["old1", "web1", "web2"],
                topics: &["web"],
                unreachable: &[("old1", LOST)],
            },
            Case {
                name:
                    "broadcast, secure: each up agent's private topic, the lost node answered for",
                req: req("web", None, None),
                secure: true,
                expected: &["old1", "web1", "web2"],
                topics: &["!to/web1/i-web1", "!to/web2/i-web2"],
                unreachable: &[("old1", LOST)],
            },
            Case {
                name: "topic match is exact, not a prefix",
                req: req("we", None, None),
                secure: true,
                expected: &[],
                topics: &[],
                unreachable: &[],
            },
            Case {
                name: "glob narrows the topic",
                req: req("any", None, Some("web*")),
                secure: false,
                expected: &["web1", "web2"],
                topics: &["web1", "web2"],
                unreachable: &[],
            },
            Case {
                name: "glob keeps a lost node that matches",
                req: req("any", None, Some("*1")),
                secure: true,
                expected: &["db1", "old1", "web1"],
                topics: &["!to/db1/i-db1", "!to/web1/i-web1"],
                unreachable: &[("old1", LOST)],
            },
            Case {
                name:
                    "node list: unknown kept (0.1 agent), outside topic dropped, down answered for",
                req: req("web", Some(&["web1", "db1", "ghost", "old1"]), None),
                secure: false,
                expected: &["ghost", "old1", "web1"],
                topics: &["ghost", "old1", "web1"],
                unreachable: &[("old1", LOST)],
            },
            Case {
                name: "node list, secure: an unknown node gets no request and no_response",
                req: req("any", Some(&["web1", "ghost"]), None),
                secure: true,
                expected: &["ghost", "web1"],
                topics: &["!to/web1/i-web1"],
                unreachable: &[("ghost", NO_SUCH_AGENT)],
            },
            Case {
                name: "node list and glob",
                req: req("any", Some(&["web1", "db1"]), Some("db*")),
                secure: false,
                expected: &["db1"],
                topics: &["db1"],
                unreachable: &[],
            },
        ];
        let reg = fleet();
        for c in cases {
            let r = route(&c.req, &reg, &HashMap::new(), c.secure, false).unwrap();
            assert_eq!(r.expected, c.expected, "{}", c.name);
            assert_eq!(r.topics, c.topics, "{}", c.name);
            // Reasons are compared by their start (a lost node's carries a time).
            let unreachable: Vec<(&str, &str)> = r
                .unreachable
                .iter()
                .map(|(n, w)| {
                    let want = c
                        .unreachable
                        .iter()
                        .find(|(m, _)| m == n)
                        .map_or("", |u| u.1);
                    (
                        n.as_str(),
                        if w.starts_with(want) {
                            want
                        } else {
                            w.as_str()
                        },
                    )
                })
                .collect();
            assert_eq!(unreachable, c.unreachable, "{}", c.name);
            assert!(r.late.is_empty(), "{}", c.name);
        }
    }

    /// What a lost node's no_response starts with.
    const LOST: &str = "lost since ";

    #[test]
    fn lost_and_stopped_nodes_are_expected_until_forgotten() {
        let mut reg = fleet();
        let mut bye = hello("web2", "i-web2", &["any", "web", "web2"]);
        bye.kind = crate::protocol::AnnounceKind::Bye;
        reg.announce(&bye, None);
        let r = route(&req("web", None, None), &reg, &HashMap::new(), true, false).unwrap();
        assert_eq!(r.expected, ["old1", "web1", "web2"]);
        assert_eq!(r.topics, ["!to/web1/i-web1"]);
        let why: Vec<&str> = r.unreachable.iter().map(|(_, w)| w.as_str()).collect();
        assert!(
            why[0].starts_with("lost since ")
                && why[0].ends_with(" UTC (the agent's connection dropped)"),
            "{why:?}"
        );
        assert!(why[1].starts_with("stopped at "), "{why:?}");
        assert!(reg.forget("old1") && reg.forget("web2") && !reg.forget("old1"));
        let r = route(&req("web", None, None), &reg, &HashMap::new(), true, false).unwrap();
        assert_eq!(r.expected, ["web1"]);
        assert!(r.unreachable.is_empty());
    }

    #[test]
    fn nodes_not_back_after_a_restart_are_awaited_within_the_grace() {
        use crate::manager::registry::{AgentEntry, Down, NOT_BACK};
        let mut reg = fleet();
        let mut info = reg.get("web1").unwrap().info.clone();
        info.node = "web3".into();
        info.instance = "i-web3".into();
        info.topics = vec!["web".into()];
        info.state = crate::protocol::mgmt::AgentState::Lost;
        reg.restore([AgentEntry::restored(
            info,
            2000,
            Down {
                since_ms: 0,
                why: NOT_BACK.into(),
            },
        )]);
        // web4 announced itself again, its presence not in place yet.
        reg.announce(&hello("web4", "i-web4", &["web"]), None);
        let r = route(&req("web", None, None), &reg, &HashMap::new(), true, true).unwrap();
        assert_eq!(r.expected, ["old1", "web1", "web2", "web3", "web4"]);
        assert_eq!(r.late, ["web3", "web4"]);
        assert!(r.unreachable.iter().all(|(n, _)| n != "web3"));
        // After the grace it is answered for at once, saying why.
        let r = route(&req("web", None, None), &reg, &HashMap::new(), true, false).unwrap();
        assert!(r.late.is_empty());
        let (_, why) = r.unreachable.iter().find(|(n, _)| n == "web3").unwrap();
        assert_eq!(
            why,
            "not back since the manager restarted at 1970-01-01 00:00:00 UTC"
        );
    }

    #[test]
    fn times_read_as_utc() {
        use crate::manager::registry::utc;
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_106_603_000), "2026-12-01 06:30:03 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn unregistered_subscribers_are_counted_only_for_plain_broadcasts() {
        let reg = fleet();
        // Three pipes on `web`: the two up agents and one 0.1 agent.
        let subs = HashMap::from([("web".to_owned(), 3)]);
        let cases = [
            (req("web", None, None), false, 1),
            (req("web", None, None), true, 0),
            (req("web", None, Some("web*")), false, 0),
            (req("web", Some(&["web1"]), None), false, 0),
        ];
        for (r, secure, want) in cases {
            assert_eq!(
                route(&r, &reg, &subs, secure, false).unwrap().unregistered,
                want,
                "{r:?} secure={secure}"
            );
        }
    }

    #[test]
    fn a_node_refused_for_its_clock_is_answered_for_with_the_skew() {
        let mut reg = fleet();
        reg.refused_for_skew("s2", 150);
        reg.refused_for_skew("old1", -200);
        let r = route(
            &req("any", Some(&["s2", "old1"]), None),
            &reg,
            &HashMap::new(),
            true,
            false,
        );
        let want = [
            ("old1".to_owned(), skewed(-200)),
            ("s2".to_owned(), skewed(150)),
        ];
        assert_eq!(r.unwrap().unreachable, want);
        assert_eq!(
            skewed(150),
            "clock skew (+150 s): its announcements are refused; fix its clock (NTP)"
        );
        // Heard from again: the skew is forgotten.
        reg.announce(&hello("s2", "i-s2", &["any"]), None);
        assert_eq!(reg.skew_of("s2"), None);
    }

    #[test]
    fn invalid_requests_are_refused_with_a_reason() {
        let reg = fleet();
        let mut bad_cmd = req("web", None, None);
        bad_cmd.cmd = "STOP".into();
        let mut bad_service = req("web", None, None);
        bad_service.service = "../x".into();
        let cases = [
            (req("a b", None, None), "is not a valid topic"),
            (req("!to/x", None, None), "is not a valid topic"),
            (bad_service, "service name"),
            (bad_cmd, "plain command word"),
            (req("web", None, Some("[")), "is not a valid pattern"),
            (
                req("web", Some(&["ok", "a,b"]), None),
                "is not a valid node name",
            ),
        ];
        for (r, needle) in cases {
            let err = route(&r, &reg, &HashMap::new(), true, false).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{err:?} should mention {needle:?}"
            );
        }
    }
}
