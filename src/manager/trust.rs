//! The manager's gate: which requests, agents and results it lets through.
//!
//! In secure mode (the default) a request must be signed by an accepted client
//! key, an agent must announce itself with an accepted agent key and prove it
//! on its connection (a signed presence subscription) before it gets requests,
//! and a result must be signed by the accepted key of the node it names.
//! `allow_unsigned = true` also serves 0.1 peers, which sign nothing.
//! The manager is a relay, not the last line: agents check requests themselves.
//!
//! Replays across restarts: the request ids it accepted (requests and
//! `manager.shutdown`) are journaled in `state_dir/replay.journal` before it
//! acts, and the agent instances that ended (replaced by a newer one, or gone
//! with a goodbye) in `state_dir/instances.journal`, so that what was captured
//! before a restart is refused after it as before (see
//! [`crate::security::replay`] for why a journal rather than refusing what was
//! signed before the start). Announcements of a node must come newer than the
//! last one believed, and a goodbye newer than the presence it ends.

use crate::protocol::{
    Announce, AnnounceKind, MgmtBody, MgmtRefusal, MgmtRequest, Presence, RequestBody,
    ServiceRequest, SignedAnnounce, SignedResult,
};
use crate::security::{
    self, AuthError, KeyState, KeyStore, PublicKey, Purpose, ReplayGuard, Role, Signed, TurnedAway,
};
use anyhow::{Context, Result};
use slog::{info, warn, Logger};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Keys turned away by the limits on pending keys are logged at most once
/// per interval, with how many: a flood must not flood the log too.
pub const TURNED_AWAY_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How often their count is written for `mgmt keys list`, at most.
const TURNED_AWAY_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// How old a key folder's time must be to be trusted as final (see
/// [`Gate::reload_if_changed`]).
const SETTLE: Duration = Duration::from_secs(1);
/// How often pending keys are checked for expiry.
const EXPIRE_INTERVAL: Duration = Duration::from_secs(60);

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

/// Why an announcement was refused. A node whose key is accepted but whose
/// clock is off is told apart, so that the operator sees it where they look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnounceRefused {
    /// Signed by the node's accepted key, outside the time window: `skew_s`
    /// is how far its clock is ahead (+) or behind (-) the manager's.
    ClockSkew {
        node: String,
        skew_s: i64,
        why: String,
    },
    Other(String),
}

impl std::fmt::Display for AnnounceRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnnounceRefused::ClockSkew { why, .. } | AnnounceRefused::Other(why) => {
                f.write_str(why)
            }
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
    /// Agent instances that ended (replaced, or said goodbye): whatever they
    /// signed is refused, for 2 × window, after which it is stale anyway.
    retired: ReplayGuard,
    /// Per node, its current instance and the signed time of the last
    /// announcement believed: a later one must be newer.
    announced: HashMap<String, (String, u64)>,
    /// Per instance, the signed time of the last presence token granted.
    presence_ts: HashMap<String, u64>,
    /// Key lines of proven announcements, parsed: parsing one decompresses
    /// a curve point, and a fleet sends the same line in every heartbeat.
    parsed: HashMap<String, PublicKey>,
    window: Duration,
    pub allow_unsigned: bool,
    /// Modification times of the key store's directories, to notice `mgmt keys` edits.
    seen: Vec<Option<SystemTime>>,
    log: Logger,
    /// The turned-away counts at the last log line about them, and when.
    reported: TurnedAway,
    reported_at: Option<Instant>,
    /// The total written for `mgmt keys list` last, and when.
    saved: u64,
    saved_at: Option<Instant>,
    expired_at: Instant,
    /// Re-reads of the store that changed a key's state, and how many of
    /// them [`reload_if_changed`](Gate::reload_if_changed) has reported.
    generation: u64,
    reported_generation: u64,
}

/// What to tell about an agent key whose node name other accepted keys hold.
fn clash_note(pk: &PublicKey, held_by: &[PublicKey]) -> String {
    let held: Vec<String> = held_by.iter().map(PublicKey::fingerprint).collect();
    format!(
        "node {:?} is held by the accepted key {} (name clash)",
        pk.name(),
        held.join(", ")
    )
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
    /// The gate of a manager whose state is in `state_dir`: its key store
    /// (`keys/`) and replay journals.
    pub fn open(
        state_dir: &Path,
        allow_unsigned: bool,
        window: Duration,
        log: &Logger,
    ) -> Result<Gate> {
        let dir = state_dir.join("keys");
        let keys = KeyStore::open(&dir).with_context(|| {
            format!("cannot open the key store {}; set state_dir", dir.display())
        })?;
        let journal = |name: &str, window: Duration| -> Result<ReplayGuard> {
            let path = state_dir.join(name);
            let (guard, load) = ReplayGuard::open(&path, window, 1_000_000, crate::clock::now_ms())
                .context("set state_dir to a folder the manager may write")?;
            if load.damaged > 0 {
                warn!(log, "replay journal damaged: the lines that could not be read were dropped";
                    "file" => %path.display(), "damaged" => load.damaged, "kept" => load.live);
            } else if load.live > 0 {
                info!(log, "replay journal read: recent requests stay refused as replays";
                    "file" => %path.display(), "ids" => load.live);
            }
            Ok(guard)
        };
        // Counting starts anew: `mgmt keys list` shows this run's.
        if let Err(e) = keys.save_turned_away() {
            warn!(log, "cannot write the count of keys turned away"; "error" => format!("{e:#}"));
        }
        let mut g = Gate {
            keys,
            dir,
            replay: journal("replay.journal", window)?,
            retired: journal("instances.journal", window * 2)?,
            announced: HashMap::new(),
            parsed: HashMap::new(),
            presence_ts: HashMap::new(),
            window,
            allow_unsigned,
            seen: Vec::new(),
            log: log.clone(),
            reported: TurnedAway::default(),
            reported_at: None,
            saved: 0,
            saved_at: None,
            expired_at: Instant::now(),
            generation: 0,
            reported_generation: 0,
        };
        g.seen = g.mtimes();
        Ok(g)
    }

    /// Periodic work (a few times a second is fine): the report of keys
    /// turned away, and pending keys expiring.
    pub fn upkeep(&mut self) {
        self.report_turned_away();
        if self.expired_at.elapsed() < EXPIRE_INTERVAL {
            return;
        }
        self.expired_at = Instant::now();
        match self.keys.expire_pending(SystemTime::now()) {
            Ok(gone) if gone.is_empty() => {}
            Ok(gone) => {
                let names: Vec<String> = gone
                    .iter()
                    .map(|k| format!("{} ({} {})", k.fingerprint(), k.role(), k.name()))
                    .collect();
                info!(self.log, "pending keys expired: not accepted in time; filed again if announced again";
                    "keys" => names.len(), "ttl_h" => security::PENDING_TTL.as_secs() / 3600,
                    "which" => names.join(", "));
            }
            Err(e) => {
                warn!(self.log, "cannot expire pending keys"; "error" => format!("{e:#}"))
            }
        }
    }

    /// Log the keys turned away since the last report, once per
    /// [`TURNED_AWAY_LOG_INTERVAL`], and write their count for `mgmt keys list`.
    fn report_turned_away(&mut self) {
        let counts = self.keys.turned_away().clone();
        let now = Instant::now();
        let due = |at: Option<Instant>, every| at.is_none_or(|t| now.duration_since(t) >= every);
        if counts.total > self.reported.total && due(self.reported_at, TURNED_AWAY_LOG_INTERVAL) {
            let new = counts.since(&self.reported);
            warn!(self.log, "unknown keys turned away: a source filed new keys too fast, or too many are pending; accepted keys are not affected (count in: service-mgr mgmt keys list)";
                "keys" => new.total, "rate_limited" => new.rate, "source_full" => new.source_full,
                "store_full" => new.store_full, "last_source" => &new.last_source,
                "next_report_s" => TURNED_AWAY_LOG_INTERVAL.as_secs());
            self.reported = counts.clone();
            self.reported_at = Some(now);
        }
        if counts.total > self.saved && due(self.saved_at, TURNED_AWAY_SAVE_INTERVAL) {
            if let Err(e) = self.keys.save_turned_away() {
                warn!(self.log, "cannot write the count of keys turned away"; "error" => format!("{e:#}"));
            }
            self.saved = counts.total;
            self.saved_at = Some(now);
        }
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

    /// Agent keys waiting in the key store to be accepted.
    /// How many agent keys wait for acceptance.
    pub fn pending_agent_count(&self) -> usize {
        self.keys.count(KeyState::Pending, Role::Agent)
    }

    pub fn pending_agents(&self) -> Vec<PublicKey> {
        self.keys
            .list()
            .into_iter()
            .filter(|(state, key)| *state == KeyState::Pending && key.role() == Role::Agent)
            .map(|(_, key)| key)
            .collect()
    }

    /// Whether an agent's key (its key line, as the registry keeps it) is
    /// still accepted and the only accepted key of its node.
    pub fn trusts_agent_key(&self, key: &str) -> bool {
        key.parse::<PublicKey>()
            .is_ok_and(|k| self.keys.holds_its_name(&k))
    }

    /// Re-read the key store if `service-mgr mgmt keys` changed it; true
    /// if that changed any key's state.
    ///
    /// A folder's time has the file system's coarse clock (a few ms): a second
    /// change in the same tick (`keys accept --force` moves two files) leaves
    /// it as it was. So a time less than [`SETTLE`] old is not taken as seen,
    /// and the folders are read again until it is older.
    ///
    /// True if a key's state changed since the last true (also by a re-read
    /// on the way, [`look_on_disk`](Self::look_on_disk)); the store re-read
    /// after the manager's own filing of a pending key changes nothing.
    pub fn reload_if_changed(&mut self) -> Result<bool> {
        let now = self.mtimes();
        if now != self.seen {
            self.mark_seen(now);
            self.reload()?;
        }
        let changed = self.generation != self.reported_generation;
        self.reported_generation = self.generation;
        Ok(changed)
    }

    /// Re-read the key store; count a change of any key's state.
    fn reload(&mut self) -> Result<(), security::KeyStoreError> {
        let before = self.keys.list();
        self.keys.reload()?;
        if self.keys.list() != before {
            self.generation += 1;
        }
        Ok(())
    }

    /// Take the folders' times `now` as seen, but those younger than [`SETTLE`].
    fn mark_seen(&mut self, now: Vec<Option<SystemTime>>) {
        let settled = SystemTime::now() - SETTLE;
        self.seen = now
            .into_iter()
            .map(|t| t.filter(|t| *t < settled))
            .collect();
    }

    /// File a key we do not know as pending, after one more look at the disk:
    /// an operator (or a test) may have accepted it a moment ago, and filing it
    /// as pending then would shadow that. `source` is the peer's address.
    pub fn submit(&mut self, pk: &PublicKey, source: &str) -> Result<security::Submission> {
        self.look_on_disk(&pk.key_id());
        match self.keys.submit(pk, source) {
            Ok(sub) => {
                if sub.new && sub.name_clash.is_empty() {
                    info!(self.log, "unknown key filed as pending"; "key" => pk.fingerprint(),
                        "role" => pk.role().to_string(), "name" => pk.name(), "source" => source);
                } else if sub.new {
                    warn!(self.log, "pending key names a node an accepted key holds (name clash): accept it only if the node was reinstalled, with --force";
                        "key" => pk.fingerprint(), "node" => pk.name(), "source" => source,
                        "held_by" => sub.name_clash.iter().map(PublicKey::fingerprint).collect::<Vec<_>>().join(","));
                }
                Ok(sub)
            }
            Err(e) => {
                if e.turned_away().is_some() {
                    self.report_turned_away();
                }
                Err(e.into())
            }
        }
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
        if filed && self.reload().is_ok() {
            self.mark_seen(self.mtimes());
        }
    }

    /// A client request: `Ok(Some(key))` when signed and admitted, `Ok(None)`
    /// when unsigned and this manager serves 0.1 clients.
    /// `source` is the peer's address, for the limits on filing unknown keys.
    pub fn check_request(
        &mut self,
        req: &ServiceRequest,
        source: &str,
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
        let pk = match self.keys.verify_signature(auth, Purpose::Request) {
            Ok(pk) => pk,
            Err(AuthError::UnknownKey(_)) | Err(AuthError::NotAccepted(_)) => {
                return Err(Refused::Other(self.admit_client(auth, source)))
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
        // After the replay check: a retry of a request accepted in time still
        // gets its first answer. Past the deadline the client has given up and
        // told its user the request was not run; running it now would surprise
        // them (and a retry of theirs would run it twice). A job another
        // manager accepted in time and this one takes over is not late: its
        // agents answer from memory, and one that never got it refuses it.
        if let Some(ms) = body
            .late_by(crate::clock::now_ms())
            .filter(|_| req.resume.is_none())
        {
            return Err(Refused::Other(format!(
                "request refused, nothing was run: it came {ms} ms after the client's deadline \
                 for an accept (accept_by), when the client had stopped waiting (this manager's \
                 clock against the client's: a clock behind by more than the client's -t × -r \
                 makes every request late; check NTP)"
            )));
        }
        Ok(Some((pk, body.id)))
    }

    /// An unknown client key that proves possession is filed as pending.
    fn admit_client(&mut self, auth: &Signed, source: &str) -> String {
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
        if security::verify_signature(auth, Purpose::Request, |id| {
            (id == pk.key_id()).then(|| pk.clone())
        })
        .is_err()
        {
            return "request refused: bad signature".into();
        }
        match self.submit(&pk, source) {
            Ok(sub) => pending_hint(&pk, sub.state),
            Err(e) => format!("request refused: unknown client key ({e:#})"),
        }
    }

    /// An agent's hello or heartbeat: `Ok(Some(key))` for an accepted agent,
    /// `Ok(None)` for an unsigned one this manager serves, `Err` otherwise
    /// (a new key is filed as pending on the way).
    /// Returns the announcement to believe: the signed copy, never the clear one.
    /// `source` is the peer's address, for the limits on filing unknown keys.
    pub fn check_announce(
        &mut self,
        a: &Announce,
        source: &str,
    ) -> Result<(Option<PublicKey>, Announce), AnnounceRefused> {
        self.check_announce_on(a, source, false)
    }

    /// `line` parsed if it is the key `key_id`, from memory when seen
    /// before. Only a line naming the key its connection proved is kept (a
    /// pending key's holder cannot fill the memory with other lines), and
    /// the memory is capped all the same.
    fn parsed_key(&mut self, line: &str, key_id: &str) -> Option<PublicKey> {
        const PARSED_MAX: usize = 100_000;
        if let Some(key) = self.parsed.get(line) {
            return (key.key_id() == key_id).then(|| key.clone());
        }
        let key = line.parse::<PublicKey>().ok()?;
        if key.key_id() != key_id {
            return None;
        }
        if self.parsed.len() >= PARSED_MAX {
            self.parsed.clear();
        }
        self.parsed.insert(line.to_owned(), key.clone());
        Some(key)
    }

    /// As [`Gate::check_announce`]; `proven`: it came on a CURVE connection
    /// of the very key that signed it, which the handshake already proved,
    /// so the signature is not checked again. (An ed25519 verification per
    /// heartbeat was most of a 10,000-agent fleet's cost, issue 12; results
    /// are taken the same way.) Freshness, order and key state still are.
    pub fn check_announce_on(
        &mut self,
        a: &Announce,
        source: &str,
        proven: bool,
    ) -> Result<(Option<PublicKey>, Announce), AnnounceRefused> {
        let Some(auth) = &a.auth else {
            return if self.allow_unsigned {
                Ok((None, a.clone()))
            } else {
                Err(AnnounceRefused::Other(format!(
                    "unsigned announcement from {:?} ignored (allow_unsigned is off)",
                    a.node
                )))
            };
        };
        // Everything the manager acts on (kind, topics, interval) is what was signed.
        let body: SignedAnnounce = serde_json::from_str(&auth.body).map_err(|e| {
            AnnounceRefused::Other(format!("announcement refused: bad signed body: {e}"))
        })?;
        let pk = if proven {
            self.parsed_key(&body.key, &auth.key).ok_or_else(|| {
                AnnounceRefused::Other(
                    "announcement refused: its key line is not the key that signed it".into(),
                )
            })?
        } else {
            security::verify_announced(auth, Some(&body.key))
                .map_err(|e| AnnounceRefused::Other(format!("announcement refused: {e}")))?
        };
        let now = crate::clock::now_ms();
        if now.abs_diff(body.ts) > self.window.as_millis() as u64 * 2 {
            // Ahead (+) or behind (-) by this much, in whole seconds.
            let skew_s = (body.ts as i128 - now as i128).div_euclid(1000) as i64;
            let why = format!(
                "announcement refused: stale or from the future: node {:?} signed it {skew_s:+} s off the manager's clock (are the clocks in sync?)",
                body.announce.node
            );
            // An accepted agent of its own name is told apart: `mgmt agents`
            // and its requests' `no_response` show the skew.
            self.look_on_disk(&auth.key);
            let accepted = pk.role() == security::Role::Agent
                && pk.name() == body.announce.node
                && self.keys.is_accepted(&auth.key);
            return Err(if accepted {
                AnnounceRefused::ClockSkew {
                    node: body.announce.node,
                    skew_s,
                    why,
                }
            } else {
                AnnounceRefused::Other(why)
            });
        }
        let a = body.announce;
        if pk.role() != security::Role::Agent || pk.name() != a.node {
            return Err(AnnounceRefused::Other(format!(
                "announcement refused: key {} is a {} key named {:?}; node {:?} needs an agent key of its own name",
                pk.fingerprint(),
                pk.role(),
                pk.name(),
                a.node
            )));
        }
        let sub = self
            .submit(&pk, source)
            .map_err(|e| AnnounceRefused::Other(format!("{e:#}")))?;
        match sub.state {
            KeyState::Accepted if self.keys.holds_its_name(&pk) => {
                self.order(&a, body.ts)?;
                Ok((Some(pk), a))
            }
            KeyState::Accepted => Err(AnnounceRefused::Other(format!(
                "agent {:?} key {} is accepted, but so is another key of that node: {}; neither is served until one is rejected (service-mgr mgmt keys reject FINGERPRINT)",
                a.node,
                pk.fingerprint(),
                clash_note(&pk, &sub.name_clash)
            ))),
            KeyState::Pending if !sub.name_clash.is_empty() => Err(AnnounceRefused::Other(format!(
                "agent {:?} key {} is pending, and {}: if {} was reinstalled, accept it with: service-mgr mgmt keys accept --force {}",
                a.node,
                pk.fingerprint(),
                clash_note(&pk, &sub.name_clash),
                a.node,
                pk.fingerprint()
            ))),
            other => Err(AnnounceRefused::Other(format!(
                "agent {:?} key {} is {}; accept it with: service-mgr mgmt keys accept {}",
                a.node,
                pk.fingerprint(),
                other.as_str(),
                pk.fingerprint()
            ))),
        }
    }

    /// An accepted node's announcement signed at `ts` is believed only if it is
    /// newer than the last one believed of that node and its instance has not
    /// ended; a goodbye only if newer than the presence it ends. What passes
    /// is recorded: a new instance ends the old one, a goodbye its own.
    fn order(&mut self, a: &Announce, ts: u64) -> Result<(), AnnounceRefused> {
        let now = crate::clock::now_ms();
        let refuse = |why: String| {
            Err(AnnounceRefused::Other(format!(
                "announcement refused: {why}; a replay? (ignored)"
            )))
        };
        let kind = match a.kind {
            AnnounceKind::Hello => "hello",
            AnnounceKind::Heartbeat => "heartbeat",
            AnnounceKind::Bye => "goodbye",
        };
        if self.retired.seen(&a.instance, now) {
            return refuse(format!(
                "{kind} of node {:?} from instance {}, which has ended (replaced by a newer one, or said goodbye)",
                a.node, a.instance
            ));
        }
        if let Some((_, last)) = self.announced.get(&a.node).filter(|(_, last)| ts <= *last) {
            return refuse(format!(
                "{kind} of node {:?} signed at {ts}, not after its last announcement ({last})",
                a.node
            ));
        }
        let connected = self.presence_ts.get(&a.instance).copied().unwrap_or(0);
        if a.kind == AnnounceKind::Bye && ts < connected {
            return refuse(format!(
                "goodbye of node {:?} signed at {ts}, before the connection it would end ({connected})",
                a.node
            ));
        }
        let ended = match self.announced.get(&a.node) {
            Some((old, _)) if *old != a.instance => Some(old.clone()),
            _ => None,
        };
        let until = now.saturating_add(2 * self.window.as_millis() as u64);
        for instance in ended
            .iter()
            .chain((a.kind == AnnounceKind::Bye).then_some(&a.instance))
        {
            self.presence_ts.remove(instance);
            // Kept in memory when the journal cannot take it; the restart
            // after that is the only one it would not cover.
            let _ = self.retired.remember(instance, until, now);
        }
        self.announced
            .insert(a.node.clone(), (a.instance.clone(), ts));
        Ok(())
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
        let node = match self.keys.verify_signature(signed, Purpose::Announce) {
            // Two accepted keys for one node: neither gets its requests.
            Ok(pk) if pk.role() == security::Role::Agent && self.keys.holds_its_name(&pk) => {
                pk.name().to_owned()
            }
            _ => return Grant::No,
        };
        // An ended instance's token, or one older than the last granted (a
        // replay), earns nothing; the same token again is a reconnection.
        let now = crate::clock::now_ms();
        let last = self.presence_ts.get(&p.instance).copied().unwrap_or(0);
        if *ts < last || self.retired.seen(&p.instance, now) {
            return Grant::No;
        }
        if self.presence_ts.len() >= 100_000 {
            let horizon = now.saturating_sub(2 * self.window.as_millis() as u64);
            self.presence_ts.retain(|_, t| *t >= horizon);
        }
        self.presence_ts.insert(p.instance.clone(), *ts);
        Grant::Private(node)
    }

    /// A result on the sink: signed by the accepted key of the node it names,
    /// or unsigned in 0.1-compatible mode.
    pub fn check_result(
        &self,
        auth: Option<&Signed>,
        uuid: &str,
        node: Option<&str>,
    ) -> Result<(), ResultDropped> {
        let Some(auth) = auth else {
            return if self.allow_unsigned {
                Ok(())
            } else {
                Err(ResultDropped::Unsigned)
            };
        };
        let pk = self.keys.verify_signature(auth, Purpose::Result)?;
        if !self.keys.holds_its_name(&pk) {
            return Err(ResultDropped::NameClash {
                fingerprint: pk.fingerprint(),
                node: pk.name().to_owned(),
            });
        }
        let body = SignedResult::from_signed(&auth.body).map_err(ResultDropped::BadBody)?;
        if body.uuid != uuid || Some(body.node.as_str()) != node || pk.name() != body.node {
            return Err(ResultDropped::Mismatch {
                fingerprint: pk.fingerprint(),
                name: pk.name().to_owned(),
                node: body.node,
                uuid: body.uuid,
            });
        }
        Ok(())
    }

    /// Management commands that change something need a signed request from an
    /// accepted client key in secure mode.
    pub fn check_mgmt(&mut self, req: &MgmtRequest) -> Result<(), MgmtRefusal> {
        if self.allow_unsigned {
            return Ok(());
        }
        let auth = req.auth.as_ref().ok_or(MgmtRefusal::Unsigned)?;
        self.keys.verify_signature(auth, Purpose::Request)?;
        let body = MgmtBody::from_signed(&auth.body)
            .map_err(|e| MgmtRefusal::BadBody(std::sync::Arc::new(e)))?;
        if body.cmd != req.cmd {
            return Err(MgmtRefusal::OtherCommand);
        }
        Ok(self
            .replay
            .check(&body.id, body.ts, crate::clock::now_ms())?)
    }
}

/// Why a result on the sink is not passed on to its client.
#[derive(Debug, thiserror::Error)]
pub enum ResultDropped {
    #[error("unsigned result dropped (allow_unsigned is off)")]
    Unsigned,
    #[error("result dropped: {0}")]
    Auth(#[from] AuthError),
    #[error("result dropped: bad body: {0}")]
    BadBody(#[source] serde_json::Error),
    #[error("result dropped: signed by {fingerprint}, but node {node:?} has more than one accepted key; reject the one that is not its own")]
    NameClash { fingerprint: String, node: String },
    #[error("result dropped: signed by {fingerprint} ({name}) for node {node:?}, job {uuid}")]
    Mismatch {
        fingerprint: String,
        name: String,
        node: String,
        uuid: String,
    },
}

impl ResultDropped {
    /// One short word for counting dropped results.
    pub fn reason(&self) -> &'static str {
        match self {
            ResultDropped::Unsigned => "unsigned",
            ResultDropped::Auth(e) => e.reason(),
            ResultDropped::BadBody(_) => "malformed",
            ResultDropped::Mismatch { .. } => "mismatch",
            ResultDropped::NameClash { .. } => "name_clash",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{sign_body, KeyPair, Role};

    fn discard() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    /// A gate in secure mode whose store has alice (client) and web1 (agent)
    /// accepted, mallory (client) pending.
    struct Fixture {
        _dir: tempfile::TempDir,
        gate: Gate,
        alice: KeyPair,
        mallory: KeyPair,
        web1: KeyPair,
    }

    fn fixture(allow_unsigned: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut gate = Gate::open(
            dir.path(),
            allow_unsigned,
            Duration::from_secs(60),
            &discard(),
        )
        .unwrap();
        let alice = KeyPair::generate(Role::Client, "alice").unwrap();
        let mallory = KeyPair::generate(Role::Client, "mallory").unwrap();
        let web1 = KeyPair::generate(Role::Agent, "web1").unwrap();
        for k in [&alice, &mallory, &web1] {
            gate.keys.submit(k.public(), "test").unwrap();
        }
        gate.keys.accept(&alice.public().fingerprint()).unwrap();
        gate.keys.accept(&web1.public().fingerprint()).unwrap();
        Fixture {
            _dir: dir,
            gate,
            alice,
            mallory,
            web1,
        }
    }

    fn request() -> ServiceRequest {
        ServiceRequest::new("restart", "nginx", "web")
    }

    /// `req` signed by `key`, its body changed by `edit` first.
    fn signed(
        key: &KeyPair,
        mut req: ServiceRequest,
        edit: impl FnOnce(&mut RequestBody),
    ) -> ServiceRequest {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut body =
            RequestBody::for_request(&req, id, crate::clock::now_ms(), key.public().to_string());
        edit(&mut body);
        let body = serde_json::to_value(&body).unwrap();
        req.auth = Some(sign_body(key, Purpose::Request, &body));
        req
    }

    #[test]
    fn gate_decides_on_requests() {
        let f = fixture(false);
        let mut tampered = signed(&f.alice, request(), |_| {});
        tampered.auth.as_mut().unwrap().body = tampered
            .auth
            .as_ref()
            .unwrap()
            .body
            .replace("nginx", "sshd");
        let mut widened = signed(&f.alice, request(), |_| {});
        widened.topic = "any".into();
        let mut run = signed(&f.alice, request(), |b| b.dry_run = true);
        run.dry_run = false;
        // (case, request, secure mode?, expected: Ok(signed?) or Err(part of the reason))
        let cases: Vec<(&str, ServiceRequest, bool, Result<bool, &str>)> = vec![
            (
                "unsigned, secure",
                request(),
                false,
                Err("unsigned request refused"),
            ),
            ("unsigned, 0.1-compatible", request(), true, Ok(false)),
            (
                "signed by an accepted client",
                signed(&f.alice, request(), |_| {}),
                false,
                Ok(true),
            ),
            (
                "signed, 0.1-compatible too",
                signed(&f.alice, request(), |_| {}),
                true,
                Ok(true),
            ),
            (
                "body altered after signing",
                tampered,
                false,
                Err("bad signature"),
            ),
            (
                "routing copy differs from the body",
                widened,
                false,
                Err("does not match"),
            ),
            (
                "a plan signed, a run sent",
                run,
                false,
                Err("does not match"),
            ),
            (
                "body names another client",
                signed(&f.alice, request(), |b| {
                    b.client = f.mallory.public().to_string()
                }),
                false,
                Err("names another client key"),
            ),
            (
                "pending client key",
                signed(&f.mallory, request(), |_| {}),
                false,
                Err("is pending"),
            ),
            (
                "unknown client key is filed as pending",
                signed(
                    &KeyPair::generate(Role::Client, "eve").unwrap(),
                    request(),
                    |_| {},
                ),
                false,
                Err("mgmt keys accept"),
            ),
            (
                "an agent key cannot sign requests",
                signed(&f.web1, request(), |_| {}),
                false,
                Err("client key"),
            ),
            (
                "stale",
                signed(&f.alice, request(), |b| b.ts -= 10 * 60 * 1000),
                false,
                Err("expired"),
            ),
            (
                "after the client's deadline for an accept",
                signed(&f.alice, request(), |b| b.accept_by = Some(b.ts - 1)),
                false,
                Err("after the client's deadline"),
            ),
            (
                "before the client's deadline for an accept",
                signed(&f.alice, request(), |b| b.accept_by = Some(b.ts + 60_000)),
                false,
                Ok(true),
            ),
        ];
        for (name, req, allow_unsigned, want) in cases {
            let mut f2 = fixture(allow_unsigned);
            // The same keys in every gate: copy the fixture's store decisions
            // (its web1 key replaces this gate's own: one key per node).
            for (k, accept) in [(&f.alice, true), (&f.mallory, false), (&f.web1, true)] {
                f2.gate.keys.submit(k.public(), "test").unwrap();
                if accept {
                    f2.gate
                        .keys
                        .accept_replacing(&k.public().fingerprint())
                        .unwrap();
                }
            }
            let got = f2.gate.check_request(&req, "test");
            match (got, want) {
                (Ok(key), Ok(signed)) => assert_eq!(key.is_some(), signed, "{name}"),
                (Err(r), Err(needle)) => {
                    assert!(r.message().contains(needle), "{name}: {:?}", r.message())
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn gate_answers_a_replay_with_its_id() {
        let mut f = fixture(false);
        let req = signed(&f.alice, request(), |_| {});
        let (_, id) = f.gate.check_request(&req, "test").unwrap().unwrap();
        assert!(
            matches!(f.gate.check_request(&req, "test"), Err(Refused::Replayed(i, _)) if i == id)
        );
    }

    fn hello(node: &str) -> Announce {
        crate::manager::registry::hello(node, "i1", &["any", node])
    }

    fn signed_hello(key: &KeyPair, a: Announce, ts: u64) -> Announce {
        let body = SignedAnnounce {
            announce: a.clone(),
            key: key.public().to_string(),
            ts,
        };
        let auth = sign_body(
            key,
            Purpose::Announce,
            &serde_json::to_value(&body).unwrap(),
        );
        Announce {
            auth: Some(auth),
            ..a
        }
    }

    /// On a CURVE connection (proven), an announcement whose key line is
    /// another agent's key is refused, whether that line was parsed before
    /// (remembered) or not.
    #[test]
    fn a_proven_announcement_must_carry_its_own_key_line() {
        let mut f = fixture(false);
        let now = crate::clock::now_ms();
        let web2 = KeyPair::generate(Role::Agent, "web2").unwrap();
        let own = signed_hello(&f.web1, hello("web1"), now);
        let body = SignedAnnounce {
            announce: hello("web1"),
            key: f.web1.public().to_string(),
            ts: now + 1,
        };
        let auth = sign_body(
            &web2,
            Purpose::Announce,
            &serde_json::to_value(&body).unwrap(),
        );
        let borrowed = Announce {
            auth: Some(auth),
            ..hello("web1")
        };
        let refused = |g: &mut Gate| match g.check_announce_on(&borrowed, "test", true) {
            Err(why) => assert!(
                why.to_string().contains("not the key that signed it"),
                "{why}"
            ),
            Ok(_) => panic!("web2 announced with web1's key line and was believed"),
        };
        refused(&mut f.gate);
        assert!(f.gate.check_announce_on(&own, "test", true).is_ok());
        // web1's line is remembered now: still not web2's.
        refused(&mut f.gate);
    }

    #[test]
    fn gate_decides_on_announcements() {
        let f = fixture(false);
        let now = crate::clock::now_ms();
        let web2 = KeyPair::generate(Role::Agent, "web2").unwrap();
        let mut forged = signed_hello(&f.web1, hello("web1"), now);
        forged.topics.push("db".into()); // the clear copy is not what counts
        let cases: Vec<(&str, Announce, bool, Result<(), &str>)> = vec![
            (
                "unsigned, secure",
                hello("web1"),
                false,
                Err("allow_unsigned is off"),
            ),
            ("unsigned, 0.1-compatible", hello("web1"), true, Ok(())),
            (
                "accepted agent key",
                signed_hello(&f.web1, hello("web1"), now),
                false,
                Ok(()),
            ),
            ("clear copy edited", forged, false, Ok(())),
            (
                "another node's name",
                signed_hello(&f.web1, hello("web9"), now),
                false,
                Err("needs an agent key of its own name"),
            ),
            (
                "a client key",
                signed_hello(&f.alice, hello("alice"), now),
                false,
                Err("needs an agent key"),
            ),
            (
                "new agent key: pending",
                signed_hello(&web2, hello("web2"), now),
                false,
                Err("is pending"),
            ),
            (
                "stale",
                signed_hello(&f.web1, hello("web1"), now - 10 * 60 * 1000),
                false,
                Err("stale"),
            ),
        ];
        for (name, a, allow_unsigned, want) in cases {
            let mut g = fixture(allow_unsigned);
            g.gate.keys.submit(f.web1.public(), "test").unwrap();
            g.gate
                .keys
                .accept_replacing(&f.web1.public().fingerprint())
                .unwrap();
            match (g.gate.check_announce(&a, "test"), want) {
                (Ok((_, believed)), Ok(())) => {
                    assert_eq!(believed.topics, hello(&a.node).topics, "{name}")
                }
                (Err(why), Err(needle)) => {
                    assert!(why.to_string().contains(needle), "{name}: {why:?}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn clock_skew_of_an_accepted_agent_is_told_apart() {
        let f = fixture(false);
        let now = crate::clock::now_ms();
        let web2 = KeyPair::generate(Role::Agent, "web2").unwrap();
        let mut g = fixture(false);
        g.gate.keys.submit(f.web1.public(), "test").unwrap();
        g.gate
            .keys
            .accept_replacing(&f.web1.public().fingerprint())
            .unwrap();
        let ahead = signed_hello(&f.web1, hello("web1"), now + 150_500);
        match g.gate.check_announce(&ahead, "test") {
            Err(AnnounceRefused::ClockSkew { node, skew_s, .. }) => {
                assert_eq!((node.as_str(), skew_s), ("web1", 150))
            }
            other => panic!("ahead: {other:?}"),
        }
        let behind = signed_hello(&f.web1, hello("web1"), now - 200_000);
        assert!(matches!(
            g.gate.check_announce(&behind, "test"),
            Err(AnnounceRefused::ClockSkew {
                skew_s: -200 | -201,
                ..
            })
        ));
        // A key that is not accepted gets no such standing.
        let new = signed_hello(&web2, hello("web2"), now + 150_000);
        assert!(matches!(
            g.gate.check_announce(&new, "test"),
            Err(AnnounceRefused::Other(_))
        ));
    }

    #[test]
    fn gate_decides_on_results_and_shutdowns() {
        let mut f = fixture(false);
        let result = |key: &KeyPair, uuid: &str, node: &str| {
            let body = SignedResult {
                uuid: uuid.into(),
                node: node.into(),
                status: crate::protocol::Status::Ok,
                request_id: None,
                sealed: None,
                result: None,
            };
            sign_body(key, Purpose::Result, &serde_json::to_value(&body).unwrap())
        };
        let web1_ok = result(&f.web1, "j1", "web1");
        type Case<'a> = (&'a str, Option<Signed>, &'a str, Result<(), &'a str>);
        let cases: Vec<Case> = vec![
            (
                "unsigned, secure",
                None,
                "web1",
                Err("unsigned result dropped"),
            ),
            ("signed by the node", Some(web1_ok.clone()), "web1", Ok(())),
            (
                "names another node",
                Some(web1_ok),
                "web2",
                Err("result dropped: signed by"),
            ),
            (
                "another job",
                Some(result(&f.web1, "j0", "web1")),
                "web1",
                Err("result dropped"),
            ),
            (
                "a client key",
                Some(result(&f.alice, "j1", "web1")),
                "web1",
                Err("result dropped"),
            ),
        ];
        for (name, auth, node, want) in cases {
            let got = f.gate.check_result(auth.as_ref(), "j1", Some(node));
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(why), Err(needle)) => {
                    assert!(why.to_string().contains(needle), "{name}: {why:?}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }

        let shutdown = |key: &KeyPair, cmd: &str| {
            let mut req = MgmtRequest::new(crate::protocol::MANAGER_SHUTDOWN);
            let body = MgmtBody {
                cmd: cmd.into(),
                id: uuid::Uuid::new_v4().simple().to_string(),
                ts: crate::clock::now_ms(),
                node: None,
            };
            req.auth = Some(sign_body(
                key,
                Purpose::Request,
                &serde_json::to_value(&body).unwrap(),
            ));
            req
        };
        let once = shutdown(&f.alice, "manager.shutdown");
        let cases: Vec<(&str, MgmtRequest, Result<(), &str>)> = vec![
            (
                "unsigned",
                MgmtRequest::new("manager.shutdown"),
                Err("needs a signed request"),
            ),
            ("accepted client", once.clone(), Ok(())),
            ("the same again", once, Err("replayed")),
            (
                "signed for another command",
                shutdown(&f.alice, "agent.shutdown"),
                Err("another command"),
            ),
            (
                "pending client",
                shutdown(&f.mallory, "manager.shutdown"),
                Err("has not been accepted"),
            ),
        ];
        for (name, req, want) in cases {
            match (f.gate.check_mgmt(&req), want) {
                (Ok(()), Ok(())) => {}
                (Err(why), Err(needle)) => {
                    assert!(why.to_string().contains(needle), "{name}: {why:?}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let mut open = fixture(true);
        assert!(open
            .gate
            .check_mgmt(&MgmtRequest::new("manager.shutdown"))
            .is_ok());
    }

    fn presence(key: &KeyPair) -> Presence {
        let ts = crate::clock::now_ms();
        let signed = sign_body(key, Purpose::Announce, &Presence::signed_text("i1", ts));
        Presence {
            instance: "i1".into(),
            signed: Some((ts, signed)),
        }
    }

    /// An agent key named like an accepted node was filed pending with no word
    /// of the clash; once accepted it got that node's requests (issue 11).
    #[test]
    fn a_node_name_held_by_another_key_is_told_and_never_served_twice() {
        let mut f = fixture(false);
        let now = crate::clock::now_ms();
        let impostor = KeyPair::generate(Role::Agent, "web1").unwrap();
        let why = f
            .gate
            .check_announce(&signed_hello(&impostor, hello("web1"), now), "10.0.0.66")
            .unwrap_err()
            .to_string();
        let fp = impostor.public().fingerprint();
        assert!(
            why.contains("name clash")
                && why.contains(&f.web1.public().fingerprint())
                && why.contains(&format!("keys accept --force {fp}")),
            "{why}"
        );
        assert_eq!(f.gate.check_presence(&presence(&impostor)), Grant::No);
        assert_eq!(
            f.gate.check_presence(&presence(&f.web1)),
            Grant::Private("web1".into())
        );
        // Both accepted by editing the store by hand: neither is served.
        let dir = &f._dir.path().join("keys");
        std::fs::rename(
            dir.join("pending").join(&fp),
            dir.join("accepted").join(&fp),
        )
        .unwrap();
        f.gate.keys.reload().unwrap();
        for key in [&f.web1, &impostor] {
            let why = f
                .gate
                .check_announce(&signed_hello(key, hello("web1"), now), "10.0.0.1")
                .unwrap_err()
                .to_string();
            assert!(why.contains("neither is served"), "{why}");
            assert_eq!(f.gate.check_presence(&presence(key)), Grant::No);
            let body = SignedResult {
                uuid: "j1".into(),
                node: "web1".into(),
                status: crate::protocol::Status::Ok,
                request_id: None,
                sealed: None,
                result: None,
            };
            let auth = sign_body(key, Purpose::Result, &serde_json::to_value(&body).unwrap());
            let dropped = f.gate.check_result(Some(&auth), "j1", Some("web1"));
            assert!(
                matches!(dropped, Err(ResultDropped::NameClash { .. })),
                "{dropped:?}"
            );
        }
        // One of them rejected: the other holds the name again.
        f.gate.keys.reject(&f.web1.public().fingerprint()).unwrap();
        assert_eq!(
            f.gate.check_presence(&presence(&impostor)),
            Grant::Private("web1".into())
        );
    }

    /// Announcement `kind` of web1's `instance`, signed by `key` at `ts`.
    fn announce(key: &KeyPair, kind: AnnounceKind, instance: &str, ts: u64) -> Announce {
        let mut a = crate::manager::registry::hello("web1", instance, &["any", "web1"]);
        a.kind = kind;
        signed_hello(key, a, ts)
    }

    fn presence_at(key: &KeyPair, instance: &str, ts: u64) -> Presence {
        Presence {
            instance: instance.into(),
            signed: Some((
                ts,
                sign_body(key, Purpose::Announce, &Presence::signed_text(instance, ts)),
            )),
        }
    }

    #[test]
    fn announcements_and_presence_are_believed_in_order_only() {
        use AnnounceKind::{Bye, Heartbeat, Hello};
        let mut f = fixture(false);
        let now = crate::clock::now_ms();
        let web1 = &f.web1;
        let ok = |g: &mut Gate, a: Announce| {
            g.check_announce(&a, "127.0.0.1")
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let beat1 = announce(web1, Heartbeat, "i1", now - 5000);
        ok(&mut f.gate, announce(web1, Hello, "i1", now - 6000)).unwrap();
        ok(&mut f.gate, beat1.clone()).unwrap();
        // The same heartbeat again, or an older one: a replay.
        let err = ok(&mut f.gate, beat1.clone()).unwrap_err();
        assert!(err.contains("not after its last announcement"), "{err}");
        assert_eq!(
            f.gate.check_presence(&presence_at(web1, "i1", now - 4000)),
            Grant::Private("web1".into())
        );
        // The same token again is a reconnection; an older one is not.
        assert_eq!(
            f.gate.check_presence(&presence_at(web1, "i1", now - 4000)),
            Grant::Private("web1".into())
        );
        assert_eq!(
            f.gate.check_presence(&presence_at(web1, "i1", now - 4500)),
            Grant::No
        );
        // A goodbye signed before the presence it would end.
        let err = ok(&mut f.gate, announce(web1, Bye, "i1", now - 4200)).unwrap_err();
        assert!(err.contains("before the connection"), "{err}");
        // A new instance replaces i1, which has ended: its goodbye, heartbeats
        // and presence are refused.
        let bye1 = announce(web1, Bye, "i1", now - 3000);
        ok(&mut f.gate, announce(web1, Hello, "i2", now - 2000)).unwrap();
        let err = ok(&mut f.gate, bye1.clone()).unwrap_err();
        assert!(err.contains("which has ended"), "{err}");
        assert!(ok(&mut f.gate, announce(web1, Heartbeat, "i1", now - 1000)).is_err());
        assert_eq!(
            f.gate.check_presence(&presence_at(web1, "i1", now - 900)),
            Grant::No
        );
        ok(&mut f.gate, announce(web1, Heartbeat, "i2", now - 1000)).unwrap();
        // Said goodbye: i2 has ended too.
        ok(&mut f.gate, announce(web1, Bye, "i2", now - 500)).unwrap();
        assert!(ok(&mut f.gate, announce(web1, Heartbeat, "i2", now - 400)).is_err());
        // A restarted manager (the same state_dir) still refuses what ended.
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let mut again = Gate::open(f._dir.path(), false, Duration::from_secs(60), &log).unwrap();
        let err = ok(&mut again, bye1).unwrap_err();
        assert!(err.contains("which has ended"), "{err}");
        assert_eq!(
            again.check_presence(&presence_at(web1, "i2", now - 300)),
            Grant::No
        );
        ok(&mut again, announce(web1, Hello, "i3", now)).unwrap();
    }
}
