//! Who is at the other end of each connection. Every manager socket is a
//! CURVE server; libzmq asks [`Peers::judge`] (through ZAP) once per
//! connection, before a single message of that peer is read, and tags every
//! message of an admitted connection with a `User-Id`: the hex of the peer's
//! CURVE key, which is the X25519 half of its service-mgr key. Handlers look
//! the sender up with [`Peers::key`], so no connection can speak for a key it
//! does not hold.

use crate::security::{KeyPair, KeyState, KeyStore, PublicKey, Role};
use crate::zap::{Mechanism, Verdict, ZapRequest};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// ZAP domains: one per socket role, so one rule per socket.
pub mod domain {
    pub const FRONTEND: &str = "frontend";
    pub const RESULTS: &str = "results";
    pub const BACKEND: &str = "backend";
    pub const SINK: &str = "sink";
    pub const MGMT: &str = "mgmt";
}

/// Handshakes with keys the store does not know (yet), per source address and
/// minute: enough for a new agent or client to file its key as pending, not
/// for a flood of throwaway keys to hold connections. Such a connection stays
/// open (libzmq does not retry a refused handshake): once the key is accepted
/// its messages count, judged per message by [`Peers::key`].
const STRANGERS_PER_MINUTE: u32 = 30;
/// Refused handshakes are summed up in the log at most this often.
const DENIAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What a management connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Right {
    Read,
    Admin,
}

/// The `User-Id` of a CURVE key.
pub fn user_id(curve_key: &[u8; 32]) -> String {
    // Not a format! per byte: every key of the store is re-indexed this way
    // (10,000 at a fleet's cold start, several times a second).
    hex::encode(curve_key)
}

/// The user id of a service-mgr key id (base64url of ed25519 || x25519), if it is one.
pub fn user_id_of_key_id(key_id: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key_id)
        .ok()?;
    let curve: [u8; 32] = bytes.get(32..64)?.try_into().ok()?;
    Some(user_id(&curve))
}

fn matches(patterns: &[String], key: &PublicKey) -> bool {
    patterns
        .iter()
        .any(|p| p == "*" || p == key.name() || p == &key.fingerprint() || p == &key.to_string())
}

pub struct Peers {
    own: String,
    /// Every key of the store, by user id, with its state.
    by_user: HashMap<String, (KeyState, PublicKey)>,
    read: Vec<String>,
    admin: Vec<String>,
    /// Handshakes of unknown keys per address: (minute started, count).
    strangers: HashMap<String, (Instant, u32)>,
    denied: u64,
    denied_example: String,
    last_denial_log: Instant,
    /// A lookup found no accepted key: the store may know more than the index.
    missed: std::cell::Cell<bool>,
    refreshed: Instant,
}

impl Peers {
    pub fn new(own: &KeyPair, read: &[String], admin: &[String]) -> Peers {
        Peers {
            own: user_id(&own.public().curve_key()),
            by_user: HashMap::new(),
            read: read.to_vec(),
            admin: admin.to_vec(),
            strangers: HashMap::new(),
            denied: 0,
            denied_example: String::new(),
            last_denial_log: Instant::now(),
            missed: Default::default(),
            refreshed: Instant::now() - Duration::from_secs(1),
        }
    }

    /// Re-index if a lookup missed since the last refresh (a key filed or
    /// accepted on disk a moment ago), at most every 200 ms.
    pub fn refresh_if_missed(&mut self, keys: &KeyStore) {
        if self.missed.get() && self.refreshed.elapsed() >= Duration::from_millis(200) {
            self.refresh(keys);
        }
    }

    /// Re-index after the key store changed.
    pub fn refresh(&mut self, keys: &KeyStore) {
        self.missed.set(false);
        self.refreshed = Instant::now();
        self.by_user = keys
            .list()
            .into_iter()
            .map(|(state, key)| (user_id(&key.curve_key()), (state, key)))
            .collect();
    }

    /// The key behind a connection, and its state in the store.
    pub fn key(&self, user: &str) -> Option<(KeyState, &PublicKey)> {
        let found = self.by_user.get(user).map(|(s, k)| (*s, k));
        if !matches!(found, Some((KeyState::Accepted, _))) {
            self.missed.set(true);
        }
        found
    }

    /// The accepted key of `role` behind a connection.
    pub fn accepted(&self, user: &str, role: Role) -> Option<&PublicKey> {
        match self.key(user) {
            Some((KeyState::Accepted, k)) if k.role() == role => Some(k),
            _ => None,
        }
    }

    /// What a management connection may do (`None`: it would not have been admitted).
    pub fn right(&self, user: &str) -> Option<Right> {
        if user == self.own {
            return Some(Right::Admin);
        }
        let key = self.accepted(user, Role::Client)?;
        if matches(&self.admin, key) {
            Some(Right::Admin)
        } else if matches(&self.read, key) {
            Some(Right::Read)
        } else {
            None
        }
    }

    /// A handshake from a key the store does not know: within the address's budget?
    fn stranger_allowed(&mut self, address: &str) -> bool {
        let now = Instant::now();
        if self.strangers.len() > 10_000 {
            self.strangers
                .retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(60));
        }
        let (since, n) = self.strangers.entry(address.to_owned()).or_insert((now, 0));
        if now.duration_since(*since) >= Duration::from_secs(60) {
            *since = now;
            *n = 0;
        }
        *n += 1;
        *n <= STRANGERS_PER_MINUTE
    }

    /// ZAP: may this peer complete its handshake on this socket? `keys` is
    /// looked at when the index does not know the key.
    pub fn judge(&mut self, req: &ZapRequest, keys: &KeyStore) -> Verdict {
        let Mechanism::Curve { client_key } = &req.mechanism else {
            return self.deny(req, "CURVE required".into());
        };
        let user = user_id(client_key);
        if !matches!(self.key(&user), Some((KeyState::Accepted, _))) {
            self.refresh_if_missed(keys);
        }
        let state = self.key(&user).map(|(s, k)| (s, k.role()));
        use domain::*;
        let ok = match (req.domain.as_str(), state) {
            (_, Some((KeyState::Rejected, _))) => Err("rejected key"),
            (MGMT, _) => self.right(&user).ok_or("no management right"),
            (FRONTEND | RESULTS, Some((KeyState::Accepted, Role::Client))) => Ok(Right::Read),
            (BACKEND | SINK, Some((KeyState::Accepted, Role::Agent))) => Ok(Right::Read),
            // Strangers may reach the sockets where a key is filed as pending or
            // waits for acceptance; until then nothing they send is served.
            (FRONTEND | SINK | BACKEND, None | Some((KeyState::Pending, _))) => {
                if self.stranger_allowed(&req.address) {
                    Ok(Right::Read)
                } else {
                    Err("too many handshakes of unknown keys from this address")
                }
            }
            (RESULTS, None | Some((KeyState::Pending, _))) => Err("key not accepted"),
            (_, Some(_)) => Err("a key of another role"),
            _ => Err("unknown ZAP domain"),
        };
        match ok {
            Ok(_) => Verdict::Allow { user_id: user },
            Err(why) => self.deny(req, format!("{why} ({user})")),
        }
    }

    fn deny(&mut self, req: &ZapRequest, reason: String) -> Verdict {
        self.denied += 1;
        self.denied_example = format!("{} on {}: {reason}", req.address, req.domain);
        Verdict::Deny { reason }
    }

    /// Refused handshakes since the last call, at most once per interval:
    /// (how many, one example), for one log line instead of one per attempt.
    pub fn denials_to_log(&mut self) -> Option<(u64, String)> {
        if self.denied == 0 || self.last_denial_log.elapsed() < DENIAL_LOG_INTERVAL {
            return None;
        }
        self.last_denial_log = Instant::now();
        let n = std::mem::take(&mut self.denied);
        Some((n, std::mem::take(&mut self.denied_example)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zap(domain: &str, key: &PublicKey) -> ZapRequest {
        ZapRequest {
            request_id: b"1".to_vec(),
            domain: domain.into(),
            address: "10.0.0.9".into(),
            mechanism: Mechanism::Curve {
                client_key: key.curve_key(),
            },
        }
    }

    impl Peers {
        fn judge_t(&mut self, req: &ZapRequest) -> Verdict {
            let dir = tempfile::tempdir().unwrap();
            let empty = KeyStore::open(dir.path()).unwrap();
            self.missed.set(false);
            self.judge(req, &empty)
        }
    }

    fn allowed(v: &Verdict) -> bool {
        matches!(v, Verdict::Allow { .. })
    }

    #[test]
    fn each_socket_admits_its_own_kind_of_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path()).unwrap();
        let own = KeyPair::generate(Role::Manager, "mgr").unwrap();
        let alice = KeyPair::generate(Role::Client, "alice").unwrap();
        let web1 = KeyPair::generate(Role::Agent, "web1").unwrap();
        let eve = KeyPair::generate(Role::Client, "eve").unwrap();
        for k in [&alice, &web1, &eve] {
            store.submit(k.public(), "10.0.0.9").unwrap();
        }
        store.accept("alice").unwrap();
        store.accept("web1").unwrap();
        store.reject("eve").unwrap();
        let mut peers = Peers::new(&own, &[], &[]);
        peers.refresh(&store);
        let a = alice.public();
        let w = web1.public();
        assert!(allowed(&peers.judge_t(&zap(domain::FRONTEND, a))));
        assert!(allowed(&peers.judge_t(&zap(domain::RESULTS, a))));
        assert!(!allowed(&peers.judge_t(&zap(domain::BACKEND, a))));
        assert!(allowed(&peers.judge_t(&zap(domain::BACKEND, w))));
        assert!(allowed(&peers.judge_t(&zap(domain::SINK, w))));
        assert!(!allowed(&peers.judge_t(&zap(domain::RESULTS, w))));
        // Management: own key always, clients only when granted.
        assert!(allowed(&peers.judge_t(&zap(domain::MGMT, own.public()))));
        assert!(!allowed(&peers.judge_t(&zap(domain::MGMT, a))));
        let mut granted = Peers::new(&own, &["alice".into()], &[]);
        granted.refresh(&store);
        assert!(allowed(&granted.judge_t(&zap(domain::MGMT, a))));
        assert_eq!(granted.right(&user_id(&a.curve_key())), Some(Right::Read));
        // Rejected keys get nowhere; strangers only where keys are filed, and not in floods.
        assert!(!allowed(
            &peers.judge_t(&zap(domain::FRONTEND, eve.public()))
        ));
        let stranger = KeyPair::generate(Role::Agent, "new").unwrap();
        assert!(!allowed(
            &peers.judge_t(&zap(domain::RESULTS, stranger.public()))
        ));
        let admitted = (0..100)
            .filter(|_| allowed(&peers.judge_t(&zap(domain::SINK, stranger.public()))))
            .count();
        assert_eq!(admitted, STRANGERS_PER_MINUTE as usize);
        assert_eq!(
            user_id_of_key_id(&a.key_id()),
            Some(user_id(&a.curve_key()))
        );
    }
}
