//! The manager's gate: which requests, agents and results it lets through.
//!
//! In secure mode (the default) a request must be signed by an accepted client
//! key, an agent must announce itself with an accepted agent key and prove it
//! on its connection (a signed presence subscription) before it gets requests,
//! and a result must be signed by the accepted key of the node it names.
//! `allow_unsigned = true` also serves 0.1 peers, which sign nothing.
//! The manager is a relay, not the last line: agents check requests themselves.

use crate::protocol::{
    Announce, MgmtBody, MgmtRequest, Presence, RequestBody, ServiceRequest, SignedAnnounce,
    SignedResult,
};
use crate::security::{
    self, AuthError, KeyState, KeyStore, PublicKey, Purpose, ReplayGuard, Signed,
};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Why a request was refused; a replay is told apart so that a client's retry
/// can get the answer it missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Replayed(String, String),
    Other(String),
}

impl Refused {
    pub fn message(&self) -> &str {
        match self {
            Refused::Replayed(_, m) | Refused::Other(m) => m,
        }
    }
}

/// What a presence subscription earns its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Nothing: unsigned in secure mode, stale, or not an accepted agent key.
    No,
    /// Unsigned in 0.1-compatible mode: counted present, served on plain topics.
    Plain,
    /// Signed by the accepted key of this node: its private topic.
    Private(String),
}

pub struct Gate {
    pub keys: KeyStore,
    dir: PathBuf,
    replay: ReplayGuard,
    window: Duration,
    pub allow_unsigned: bool,
    /// Modification times of the key store's directories, to notice `mgmt keys` edits.
    seen: Vec<Option<SystemTime>>,
}

/// What to tell a client whose key is not (yet) accepted.
fn pending_hint(pk: &PublicKey, state: KeyState) -> String {
    format!(
        "client key {} ({}) is {} on the manager; on the manager's host run: service-mgr mgmt keys accept {}",
        pk.fingerprint(),
        pk.name(),
        state.as_str(),
        pk.fingerprint()
    )
}

impl Gate {
    pub fn open(dir: &Path, allow_unsigned: bool, window: Duration) -> Result<Gate> {
        let keys = KeyStore::open(dir).with_context(|| {
            format!("cannot open the key store {}; set state_dir", dir.display())
        })?;
        let mut g = Gate {
            keys,
            dir: dir.to_owned(),
            replay: ReplayGuard::new(window, 1_000_000),
            window,
            allow_unsigned,
            seen: Vec::new(),
        };
        g.seen = g.mtimes();
        Ok(g)
    }

    fn mtimes(&self) -> Vec<Option<SystemTime>> {
        ["pending", "accepted", "rejected"]
            .iter()
            .map(|d| {
                std::fs::metadata(self.dir.join(d))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .collect()
    }

    /// Re-read the key store if `service-mgr mgmt keys` changed it.
    pub fn reload_if_changed(&mut self) -> Result<bool> {
        let now = self.mtimes();
        if now == self.seen {
            return Ok(false);
        }
        self.seen = now;
        self.keys.reload()?;
        Ok(true)
    }

    /// File a key we do not know as pending, after one more look at the disk:
    /// an operator (or a test) may have accepted it a moment ago, and filing it
    /// as pending then would shadow that.
    fn submit(&mut self, pk: &PublicKey) -> Result<security::Submission> {
        self.look_on_disk(&pk.key_id());
        Ok(self.keys.submit(pk)?)
    }

    /// A key we do not know may have been filed a moment ago (by `mgmt keys`,
    /// or a test): if its file is there, re-read the store. One stat per
    /// directory, so a stranger's unknown keys cost next to nothing.
    fn look_on_disk(&mut self, key_id: &str) {
        if self.keys.state_of(key_id).is_some() {
            return;
        }
        let Some(fp) = security::fingerprint_of_id(key_id) else {
            return;
        };
        let filed = ["accepted", "pending", "rejected"]
            .iter()
            .any(|d| self.dir.join(d).join(&fp).exists());
        if filed && self.keys.reload().is_ok() {
            self.seen = self.mtimes();
        }
    }

    /// A client request: `Ok(Some(key))` when signed and admitted, `Ok(None)`
    /// when unsigned and this manager serves 0.1 clients.
    pub fn check_request(
        &mut self,
        req: &ServiceRequest,
    ) -> Result<Option<(PublicKey, String)>, Refused> {
        let Some(auth) = &req.auth else {
            return if self.allow_unsigned {
                Ok(None)
            } else {
                Err(Refused::Other("unsigned request refused: this manager serves signed requests only; create a key with \
                     `service-mgr keygen --role client` and have it accepted (or set allow_unsigned = true \
                     for 0.1 clients)"
                    .into()))
            };
        };
        // A key accepted a moment ago by `mgmt keys` is on disk, not yet in memory.
        if self.keys.state_of(&auth.key) != Some(KeyState::Accepted) {
            self.look_on_disk(&auth.key);
        }
        let pk = match self.keys.verify(auth, Purpose::Request) {
            Ok((pk, _)) => pk,
            Err(AuthError::UnknownKey(_)) | Err(AuthError::NotAccepted(_)) => {
                return Err(Refused::Other(self.admit_client(auth)))
            }
            Err(e) => return Err(Refused::Other(format!("request refused: {e}"))),
        };
        let body = RequestBody::from_signed(&auth.body)
            .map_err(|e| Refused::Other(format!("request refused: bad signed body: {e}")))?;
        if !body.matches(req) {
            return Err(Refused::Other(
                "request refused: the signed body does not match the request's fields".into(),
            ));
        }
        if body.client != pk.to_string() {
            return Err(Refused::Other(
                "request refused: the signed body names another client key".into(),
            ));
        }
        match self.replay.check(&body.id, body.ts, crate::clock::now_ms()) {
            Ok(()) => {}
            // The client's own retry (Lazy Pirate sends the same bytes again) is
            // answered with the first answer by the caller; it never runs twice.
            Err(AuthError::Replayed(_)) => {
                let msg = format!(
                    "request refused: request {} replayed: it was seen before",
                    body.id
                );
                return Err(Refused::Replayed(body.id, msg));
            }
            Err(e) => return Err(Refused::Other(format!("request refused: {e}"))),
        }
        Ok(Some((pk, body.id)))
    }

    /// An unknown client key that proves possession is filed as pending.
    fn admit_client(&mut self, auth: &Signed) -> String {
        /// Only the signer's claimed key line matters before it is known.
        #[derive(serde::Deserialize)]
        struct Claim {
            client: String,
        }
        let claimed = serde_json::from_str::<Claim>(&auth.body)
            .ok()
            .and_then(|c| c.client.parse::<PublicKey>().ok());
        let Some(pk) = claimed else {
            return "request refused: unknown client key".into();
        };
        if security::verify(auth, Purpose::Request, |id| {
            (id == pk.key_id()).then(|| pk.clone())
        })
        .is_err()
        {
            return "request refused: bad signature".into();
        }
        match self.submit(&pk) {
            Ok(sub) => pending_hint(&pk, sub.state),
            Err(e) => format!("request refused: unknown client key ({e:#})"),
        }
    }

    /// An agent's hello or heartbeat: `Ok(Some(key))` for an accepted agent,
    /// `Ok(None)` for an unsigned one this manager serves, `Err` otherwise
    /// (a new key is filed as pending on the way).
    /// Returns the announcement to believe: the signed copy, never the clear one.
    pub fn check_announce(
        &mut self,
        a: &Announce,
    ) -> Result<(Option<PublicKey>, Announce), String> {
        let Some(auth) = &a.auth else {
            return if self.allow_unsigned {
                Ok((None, a.clone()))
            } else {
                Err(format!(
                    "unsigned announcement from {:?} ignored (allow_unsigned is off)",
                    a.node
                ))
            };
        };
        let (pk, _) =
            security::verify_announce(auth).map_err(|e| format!("announcement refused: {e}"))?;
        // Everything the manager acts on (kind, topics, interval) is what was signed.
        let body: SignedAnnounce = serde_json::from_str(&auth.body)
            .map_err(|e| format!("announcement refused: bad signed body: {e}"))?;
        if crate::clock::now_ms().abs_diff(body.ts) > self.window.as_millis() as u64 * 2 {
            return Err(
                "announcement refused: stale or from the future (are the clocks in sync?)".into(),
            );
        }
        let a = body.announce;
        if pk.role() != security::Role::Agent || pk.name() != a.node {
            return Err(format!(
                "announcement refused: key {} is a {} key named {:?}; node {:?} needs an agent key of its own name",
                pk.fingerprint(),
                pk.role(),
                pk.name(),
                a.node
            ));
        }
        let sub = self.submit(&pk).map_err(|e| format!("{e:#}"))?;
        match sub.state {
            KeyState::Accepted => Ok((Some(pk), a)),
            other => Err(format!(
                "agent {:?} key {} is {}; accept it with: service-mgr mgmt keys accept {}",
                a.node,
                pk.fingerprint(),
                other.as_str(),
                pk.fingerprint()
            )),
        }
    }

    /// A presence subscription: the instance, and whether its connection may
    /// get requests (signed by an accepted agent key, recent; or unsigned in
    /// 0.1-compatible mode).
    pub fn check_presence(&mut self, p: &Presence) -> Grant {
        let Some((ts, signed)) = &p.signed else {
            return if self.allow_unsigned {
                Grant::Plain
            } else {
                Grant::No
            };
        };
        if crate::clock::now_ms().abs_diff(*ts) > self.window.as_millis() as u64 * 2 {
            return Grant::No;
        }
        // Accepted a moment ago? One more look at the disk before refusing.
        self.look_on_disk(&signed.key);
        match self.keys.verify(signed, Purpose::Announce) {
            Ok((pk, _)) if pk.role() == security::Role::Agent => {
                Grant::Private(pk.name().to_owned())
            }
            _ => Grant::No,
        }
    }

    /// A result on the sink: signed by the accepted key of the node it names,
    /// or unsigned in 0.1-compatible mode.
    pub fn check_result(
        &self,
        auth: Option<&Signed>,
        uuid: &str,
        node: Option<&str>,
    ) -> Result<(), String> {
        let Some(auth) = auth else {
            return if self.allow_unsigned {
                Ok(())
            } else {
                Err("unsigned result dropped (allow_unsigned is off)".into())
            };
        };
        let (pk, _) = self
            .keys
            .verify(auth, Purpose::Result)
            .map_err(|e| format!("result dropped: {e}"))?;
        let body = SignedResult::from_signed(&auth.body)
            .map_err(|e| format!("result dropped: bad body: {e}"))?;
        if body.uuid != uuid || Some(body.node.as_str()) != node || pk.name() != body.node {
            return Err(format!(
                "result dropped: signed by {} ({}) for node {:?}, job {}",
                pk.fingerprint(),
                pk.name(),
                body.node,
                body.uuid
            ));
        }
        Ok(())
    }

    /// Management commands that change something need a signed request from an
    /// accepted client key in secure mode.
    pub fn check_mgmt(&mut self, req: &MgmtRequest) -> Result<(), String> {
        if self.allow_unsigned {
            return Ok(());
        }
        let auth = req
            .auth
            .as_ref()
            .ok_or("this command needs a signed request: pass a client key with -k")?;
        self.keys
            .verify(auth, Purpose::Request)
            .map_err(|e| e.to_string())?;
        let body = MgmtBody::from_signed(&auth.body).map_err(|e| format!("bad signed body: {e}"))?;
        if body.cmd != req.cmd {
            return Err("the signed body names another command".into());
        }
        self.replay
            .check(&body.id, body.ts, crate::clock::now_ms())
            .map_err(|e| e.to_string())
    }
}
