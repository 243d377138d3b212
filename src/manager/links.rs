//! The agents' connections in secure mode: every agent holds one DEALER
//! connection to the backend ROUTER, for its requests, results, heartbeats and
//! acknowledgements. A connection is named by the routing id libzmq gave it
//! (never chosen by the peer, so never taken over), and stands for an agent
//! once its signed presence came on it ([`Links::grant`]).
//!
//! This replaced an XPUB for secure agents: libzmq's XPUB walked its whole
//! subscription trie for each closed connection, so a fleet dropping at once
//! cost time in the square of its size (the manager went silent 17–41 s
//! when 1,000 agents dropped, issue 12). Here a lost connection costs two map
//! lookups, and a request goes to one connection by its id.

use std::collections::{BTreeSet, HashMap};

/// Plain topics counted per connection for `manager.status`.
const TOPICS_PER_LINK_MAX: usize = 64;

/// One granted connection.
struct Link {
    instance: String,
    /// The private topic it was granted, with its terminator: the first
    /// frame of every message we send it.
    topic: Vec<u8>,
    /// Plain topics it said it has (counted in `manager.status`).
    topics: BTreeSet<String>,
}

/// Routing id <-> granted agent instance.
#[derive(Default)]
pub(super) struct Links {
    by_rid: HashMap<Vec<u8>, Link>,
    /// Private topic (with terminator) -> the routing id of its newest connection.
    by_topic: HashMap<Vec<u8>, Vec<u8>>,
}

/// What a closed connection leaves behind.
pub(super) struct Closed {
    /// The instance that connection stood for, unless a newer connection of
    /// the same instance replaced it (an agent that reconnected before the
    /// old connection timed out is not lost).
    pub lost: Option<String>,
    /// Its plain topics, to uncount.
    pub topics: BTreeSet<String>,
}

impl Links {
    /// The connection `rid` proved the presence of `instance`: requests on
    /// `topic` go to it from now on.
    pub fn grant(&mut self, rid: &[u8], instance: &str, topic: Vec<u8>) {
        if let Some(old) = self.by_rid.get(rid) {
            if old.topic != topic && self.by_topic.get(&old.topic).map(Vec::as_slice) == Some(rid) {
                self.by_topic.remove(&old.topic);
            }
        }
        self.by_topic.insert(topic.clone(), rid.to_vec());
        let topics = self
            .by_rid
            .remove(rid)
            .map(|l| l.topics)
            .unwrap_or_default();
        self.by_rid.insert(
            rid.to_vec(),
            Link {
                instance: instance.to_owned(),
                topic,
                topics,
            },
        );
    }

    /// Count a plain topic of a granted connection; false when not counted
    /// (not granted, already counted, or over the cap).
    pub fn add_topic(&mut self, rid: &[u8], topic: &str) -> bool {
        match self.by_rid.get_mut(rid) {
            Some(l) if l.topics.len() < TOPICS_PER_LINK_MAX => l.topics.insert(topic.to_owned()),
            _ => false,
        }
    }

    /// Uncount a plain topic; false when it was not counted.
    pub fn remove_topic(&mut self, rid: &[u8], topic: &str) -> bool {
        self.by_rid
            .get_mut(rid)
            .is_some_and(|l| l.topics.remove(topic))
    }

    /// Whether the private topic `topic` (with its terminator) has a live connection.
    pub fn holds(&self, topic: &[u8]) -> bool {
        self.by_topic.contains_key(topic)
    }

    /// The routing id of the connection granted `topic` (with terminator).
    pub fn route(&self, topic: &[u8]) -> Option<&[u8]> {
        self.by_topic.get(topic).map(Vec::as_slice)
    }

    /// The connection `rid` closed (or could not be sent to).
    pub fn closed(&mut self, rid: &[u8]) -> Option<Closed> {
        let link = self.by_rid.remove(rid)?;
        let current = self.by_topic.get(&link.topic).map(Vec::as_slice) == Some(rid);
        if current {
            self.by_topic.remove(&link.topic);
        }
        Some(Closed {
            lost: current.then_some(link.instance),
            topics: link.topics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnected_agent_is_not_lost_when_its_old_connection_closes() {
        let mut l = Links::default();
        l.grant(b"r1", "i1", b"!to/web1/i1\0".to_vec());
        assert!(l.add_topic(b"r1", "web"));
        assert!(!l.add_topic(b"r1", "web"));
        // The agent reconnected before the old connection timed out.
        l.grant(b"r2", "i1", b"!to/web1/i1\0".to_vec());
        assert_eq!(l.route(b"!to/web1/i1\0"), Some(&b"r2"[..]));
        let old = l.closed(b"r1").unwrap();
        assert_eq!(old.lost, None);
        assert_eq!(old.topics.len(), 1);
        assert_eq!(l.route(b"!to/web1/i1\0"), Some(&b"r2"[..]));
        let new = l.closed(b"r2").unwrap();
        assert_eq!(new.lost.as_deref(), Some("i1"));
        assert_eq!(l.route(b"!to/web1/i1\0"), None);
        assert!(l.closed(b"r2").is_none(), "closed once");
    }

    #[test]
    fn topics_of_strangers_are_not_counted() {
        let mut l = Links::default();
        assert!(!l.add_topic(b"x", "web"));
        l.grant(b"r1", "i1", b"!to/web1/i1\0".to_vec());
        for i in 0..TOPICS_PER_LINK_MAX {
            assert!(l.add_topic(b"r1", &format!("t{i}")));
        }
        assert!(!l.add_topic(b"r1", "one-too-many"));
    }
}
