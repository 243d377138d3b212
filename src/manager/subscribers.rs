//! Subscriptions per connection on the manager's two XPUBs. libzmq keeps
//! every subscription of every connection in a trie that it walks whenever
//! any connection closes; a stranger's 100,000 topics made each close cost
//! most of a second. A connection over its cap is closed (see
//! [`crate::transport::close_connections`]).

use std::collections::HashMap;
use std::time::Instant;

/// Most connections remembered; beyond, those with no live subscription go
/// first, then the longest quiet.
const TRACKED_MAX: usize = 10_000;

/// Live subscriptions of each connection (`P` keeps its name valid).
pub struct Subscribers<P> {
    max: usize,
    conns: HashMap<usize, Conn<P>>,
}

struct Conn<P> {
    address: String,
    live: usize,
    last: Instant,
    _pin: P,
}

impl<P> Subscribers<P> {
    pub fn new(max: usize) -> Self {
        Subscribers {
            max,
            conns: HashMap::new(),
        }
    }

    /// Count a subscription (or an unsubscription) of connection `conn`.
    /// Returns the connection's address when it is over the cap: the caller
    /// closes it, and its count is forgotten.
    pub fn count(&mut self, conn: usize, address: &str, pin: P, subscribe: bool) -> Option<String> {
        if !self.conns.contains_key(&conn) && self.conns.len() >= TRACKED_MAX {
            self.evict();
        }
        let c = self.conns.entry(conn).or_insert_with(|| Conn {
            address: address.to_owned(),
            live: 0,
            last: Instant::now(),
            _pin: pin,
        });
        c.last = Instant::now();
        if !subscribe {
            c.live = c.live.saturating_sub(1);
            return None;
        }
        c.live += 1;
        if c.live <= self.max {
            return None;
        }
        let address = c.address.clone();
        // Every connection of that address is closed with it.
        self.conns.retain(|_, c| c.address != address);
        Some(address)
    }

    /// Make room: connections without live subscriptions, else the quietest.
    fn evict(&mut self) {
        self.conns.retain(|_, c| c.live > 0);
        if self.conns.len() >= TRACKED_MAX {
            if let Some(&oldest) = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.last)
                .map(|(k, _)| k)
            {
                self.conns.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_over_its_cap_is_named_once() {
        let mut s = Subscribers::new(2);
        assert_eq!(s.count(1, "10.0.0.1", (), true), None);
        assert_eq!(s.count(1, "10.0.0.1", (), true), None);
        // Unsubscribing makes room again.
        assert_eq!(s.count(1, "10.0.0.1", (), false), None);
        assert_eq!(s.count(1, "10.0.0.1", (), true), None);
        // Another connection has its own count.
        assert_eq!(s.count(2, "10.0.0.2", (), true), None);
        assert_eq!(s.count(3, "10.0.0.1", (), true), None);
        assert_eq!(s.count(1, "10.0.0.1", (), true), Some("10.0.0.1".into()));
        // Forgotten with the other connection of its address.
        assert_eq!(s.len(), 1);
        assert_eq!(s.count(1, "10.0.0.1", (), true), None);
    }

    #[test]
    fn tracking_is_bounded() {
        let mut s = Subscribers::new(5);
        for conn in 0..TRACKED_MAX + 10 {
            s.count(conn, "10.0.0.1", (), true);
        }
        assert!(s.len() <= TRACKED_MAX);
    }
}
