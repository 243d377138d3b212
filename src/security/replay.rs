//! The replay guard: refuses stale, future-dated and repeated requests within
//! bounded memory.

use super::{malformed, AuthError};
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

/// Longest request id the [`ReplayGuard`] remembers: bounds its memory per entry.
pub const MAX_REQUEST_ID: usize = 128;

/// Refuses stale and repeated requests. Call it only after the signature
/// verified, so that strangers cannot fill it.
///
/// An id is remembered until its timestamp leaves the window (after which the
/// request would be refused as expired anyway). Memory is bounded by
/// `capacity` ids of at most [`MAX_REQUEST_ID`] bytes; when full it refuses
/// new requests rather than forget an id still inside the window, since
/// forgetting would let a replay through (fail closed: at worst clients retry).
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    seen: HashSet<String>,
    /// (last instant the id can be fresh, id), oldest first.
    by_expiry: BTreeSet<(u64, String)>,
}

impl ReplayGuard {
    pub fn new(window: Duration, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            capacity,
            seen: HashSet::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    /// Accept request `id` dated `ts_unix_ms` once, if within the window of `now_ms`.
    pub fn check(&mut self, id: &str, ts_unix_ms: u64, now_ms: u64) -> Result<(), AuthError> {
        if id.is_empty() || id.len() > MAX_REQUEST_ID {
            return Err(malformed(format!(
                "request id must be 1 to {MAX_REQUEST_ID} bytes"
            )));
        }
        let window_ms = self.window_ms;
        if now_ms > ts_unix_ms && now_ms - ts_unix_ms > window_ms {
            return Err(AuthError::Expired {
                age_ms: now_ms - ts_unix_ms,
                window_ms,
            });
        }
        if ts_unix_ms > now_ms && ts_unix_ms - now_ms > window_ms {
            return Err(AuthError::FromTheFuture {
                ahead_ms: ts_unix_ms - now_ms,
                window_ms,
            });
        }
        self.forget_expired(now_ms);
        if self.seen.contains(id) {
            return Err(AuthError::Replayed(id.to_owned()));
        }
        if self.seen.len() >= self.capacity {
            return Err(AuthError::ReplayCacheFull(self.capacity));
        }
        self.seen.insert(id.to_owned());
        self.by_expiry
            .insert((ts_unix_ms.saturating_add(window_ms), id.to_owned()));
        Ok(())
    }

    fn forget_expired(&mut self, now_ms: u64) {
        while let Some((expiry, _)) = self.by_expiry.first() {
            if *expiry >= now_ms {
                break;
            }
            if let Some((_, id)) = self.by_expiry.pop_first() {
                self.seen.remove(&id);
            }
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn replay_guard_refuses_stale_future_and_repeated() {
        let mut g = ReplayGuard::new(Duration::from_secs(60), 100);
        let now = 1_000_000;
        g.check("a", now, now).unwrap();
        assert_eq!(
            g.check("a", now, now + 1),
            Err(AuthError::Replayed("a".into()))
        );
        g.check("edge-old", now - 60_000, now).unwrap();
        g.check("edge-new", now + 60_000, now).unwrap();
        let err = g.check("old", now - 60_001, now).unwrap_err();
        assert_eq!(
            err,
            AuthError::Expired {
                age_ms: 60_001,
                window_ms: 60_000
            }
        );
        assert!(err.to_string().contains("expired"));
        let err = g.check("new", now + 60_001, now).unwrap_err();
        assert!(matches!(
            err,
            AuthError::FromTheFuture {
                ahead_ms: 60_001,
                ..
            }
        ));
        assert!(err.to_string().contains("from the future"));
        assert!(matches!(
            g.check("", now, now),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            g.check(&"x".repeat(129), now, now),
            Err(AuthError::Malformed(_))
        ));
        // A replay after the window is refused as expired, so the id can go.
        assert_eq!(g.len(), 3);
        assert!(matches!(
            g.check("a", now, now + 60_001),
            Err(AuthError::Expired { .. })
        ));
        g.check("b", now + 60_001, now + 60_001).unwrap();
        assert_eq!(g.len(), 2); // "a" and "edge-old" forgotten, "edge-new" and "b" kept
    }

    #[test]
    fn replay_guard_memory_is_bounded() {
        let mut g = ReplayGuard::new(Duration::from_millis(100), 3);
        for id in ["1", "2", "3"] {
            g.check(id, 1000, 1000).unwrap();
        }
        assert_eq!(g.check("4", 1000, 1050), Err(AuthError::ReplayCacheFull(3)));
        assert_eq!(g.len(), 3);
        // Once the remembered ids are too old to replay, there is room again.
        g.check("4", 1101, 1101).unwrap();
        assert_eq!(g.len(), 1);
        assert!(!g.is_empty());
    }
}
