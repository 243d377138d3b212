//! The agent's own checks on a request, and the signing of what it sends.
//!
//! The agent trusts neither the manager nor the network: a request runs only if
//! it carries a valid signature of a client key listed in `authorized_clients`,
//! is fresh and not replayed, is addressed to this node, and the `[[policy]]`
//! rules allow that key this command on this service. Results are signed with
//! the agent's key and sealed to the requesting client's key.
//!
//! Replays across restarts: the ids of the requests and `agent.shutdown`s it
//! accepted are journaled beside its key (`<key_file>.replay`) before it acts,
//! and read again at start, so that what was captured before a restart (or a
//! crash) is refused after it as before ([`crate::security::replay`] says why
//! a journal rather than refusing what was signed before the start). What the
//! agent signs itself (announcements, presence tokens) is dated by a clock that
//! never goes back within the process, since the manager refuses an
//! announcement that is not newer than the last.

use crate::agent::Identity;
use crate::config::{AgentConfig, Decision, Policy};
use crate::protocol::{
    self as p, Announce, Dispatch, MgmtBody, MgmtRefusal, MgmtRequest, Presence, RequestBody,
    ResultEnvelope, ResultMsg, SignedAnnounce, SignedResult,
};
use crate::security::{self, AuthError, KeyPair, PublicKey, Purpose, ReplayGuard, Role, Signed};
use anyhow::{Context, Result};
use slog::{error, info, warn, Logger};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often, at most, the agent looks whether authorized_clients changed
/// (a request signed by a key it does not know looks at once).
const CLIENTS_CHECK: Duration = Duration::from_secs(1);

/// A refused request: why, and the client to answer (when its signature held).
pub struct Refused {
    pub client: Option<PublicKey>,
    pub request_id: Option<String>,
    pub why: Refusal,
}

/// Why the agent refuses a request. The texts are the `msg` of the refusal
/// on the wire, which clients (0.1 among them) and tests read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("unsigned request refused: this agent runs signed requests only")]
    Unsigned,
    #[error("request refused: client key {fingerprint} is not in this agent's authorized clients ({})", file.display())]
    UnknownClient { fingerprint: String, file: PathBuf },
    #[error("request refused: {0}")]
    Auth(#[from] AuthError),
    #[error("request refused: bad signed body: {0}")]
    BadBody(#[source] Arc<serde_json::Error>),
    #[error("request refused: the signed body names another client key")]
    OtherClient,
    #[error("request refused: command or service differ from what the client signed")]
    Altered,
    #[error("request refused: the client did not address node {0:?}")]
    NotAddressed(String),
    #[error("refused by policy: {0}")]
    Policy(String),
    #[error("request refused, nothing was run: it came {0} ms after the client's deadline for an accept (accept_by), when the client had stopped waiting (this agent's clock against the client's: clock skew counts; check NTP)")]
    TooLate(u64),
    #[error("agent busy: {0} commands running (max_concurrent); try again later")]
    Busy(usize),
    #[error("the agent is stopping (it finishes the commands it runs, then exits); try again when it is back")]
    Stopping,
    #[error(transparent)]
    BadName(#[from] p::NameError),
    #[error("command {cmd:?} is not allowed on this agent (allowed: {allowed})")]
    NotAllowed { cmd: String, allowed: String },
}

impl Refusal {
    /// One short word for counting refusals (`unknown_key`, `bad_signature`,
    /// `replay`, `expired`, `policy`, `not_allowed`, `bad_name`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::UnknownClient { .. } => "unknown_key",
            Refusal::Auth(e) => e.reason(),
            Refusal::BadBody(_) => "malformed",
            Refusal::OtherClient | Refusal::Altered => "mismatch",
            Refusal::NotAddressed(_) => "not_addressed",
            Refusal::Policy(_) => "policy",
            Refusal::TooLate(_) => "too_late",
            Refusal::Busy(_) => "busy",
            Refusal::Stopping => "stopping",
            Refusal::BadName(e) => e.reason(),
            Refusal::NotAllowed { .. } => "not_allowed",
        }
    }
}

/// A request that passed: who asked (None: unsigned, allowed by config).
pub struct Admitted {
    pub client: Option<PublicKey>,
    pub request_id: Option<String>,
}

pub struct Guard {
    pub key: Arc<KeyPair>,
    /// Shared, so that a simulated fleet holds one copy for all its nodes.
    clients: Clients,
    clients_file: PathBuf,
    /// What authorized_clients looked like when we last read it (or tried to).
    clients_stamp: Option<FileStamp>,
    clients_checked: Instant,
    policy: Arc<Policy>,
    replay: ReplayGuard,
    allow_unsigned: bool,
    /// The last time we signed (ms): what we sign is dated strictly after it.
    signed_at: AtomicU64,
}

impl Guard {
    /// Load (or on first start create) the agent's key, the authorized client
    /// keys and the policy.
    pub fn load(config: &AgentConfig, node: &str, log: &Logger) -> Result<Guard> {
        let key_file = config.key_file();
        let key = if key_file.exists() {
            KeyPair::load(&key_file)?
        } else {
            let pk = security::keygen(&key_file, Role::Agent, node, false).with_context(|| {
                format!(
                    "cannot create the agent key {}; set key_file",
                    key_file.display()
                )
            })?;
            info!(log, "generated a new agent key; accept it on the manager's host";
                "file" => %key_file.display(), "command" => format!("service-mgr mgmt keys accept {}", pk.fingerprint()));
            KeyPair::load(&key_file)?
        };
        anyhow::ensure!(
            key.role() == Role::Agent && key.name() == node,
            "{} holds a {} key named {:?}; node {node:?} needs an agent key of its own name \
             (service-mgr keygen --role agent --name {node} -o FILE)",
            key_file.display(),
            key.role(),
            key.name()
        );
        let (clients, policy) = load_trust(config, log)?;
        let mut guard = Guard::new(Arc::new(key), clients, policy, config);
        let path = replay_journal(&key_file);
        let (replay, load) = ReplayGuard::open(
            &path,
            Duration::from_secs(config.request_window),
            1_000_000,
            crate::clock::now_ms(),
        )
        .context("the agent keeps it beside its key_file: that folder must be writable")?;
        if load.damaged > 0 {
            warn!(log, "replay journal damaged: the lines that could not be read were dropped";
                "file" => %path.display(), "damaged" => load.damaged, "kept" => load.live);
        }
        guard.replay = replay;
        Ok(guard)
    }

    /// A time for what we sign now: the wall clock, but strictly after the
    /// last one we used, so that a clock set back does not make our next
    /// announcement look like a replay of an earlier one.
    fn stamp(&self) -> u64 {
        let now = crate::clock::now_ms();
        let mut prev = self.signed_at.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.signed_at.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// A guard for `key` over already loaded trust (see [`load_trust`]).
    pub fn new(
        key: Arc<KeyPair>,
        clients: Clients,
        policy: Arc<Policy>,
        config: &AgentConfig,
    ) -> Guard {
        Guard {
            key,
            clients,
            clients_stamp: FileStamp::of(&config.authorized_clients()),
            clients_checked: Instant::now(),
            clients_file: config.authorized_clients(),
            policy,
            replay: ReplayGuard::new(Duration::from_secs(config.request_window), 1_000_000),
            allow_unsigned: config.allow_unsigned,
            signed_at: AtomicU64::new(0),
        }
    }

    /// Re-read authorized_clients (SIGHUP).
    pub fn reload(&mut self, log: &Logger) {
        self.clients_stamp = FileStamp::of(&self.clients_file);
        self.clients_checked = Instant::now();
        match read_clients(&self.clients_file, log) {
            Ok(c) => self.clients = Arc::new(c),
            Err(e) => warn!(log, "cannot reload authorized clients"; "error" => format!("{e:#}")),
        }
    }

    /// Whether `key_id` is one of the authorized clients loaded now.
    /// The authorized client whose CURVE key this is.
    pub fn client_by_curve(&self, curve: &[u8; 32]) -> Option<&PublicKey> {
        self.clients.values().find(|k| &k.curve_key() == curve)
    }

    pub fn knows_client(&self, key_id: &str) -> bool {
        self.clients.contains_key(key_id)
    }

    /// Re-read authorized_clients if the file changed (modification time,
    /// size or inode): at most once per [`CLIENTS_CHECK`] unless `now`, which
    /// the agent passes before it verifies a key it does not know, so that an
    /// appended key works at once and no signal is needed. A file that became
    /// unreadable, vanished or holds an invalid line keeps the keys loaded
    /// before, with one error per change of the file.
    pub fn reload_if_changed(&mut self, log: &Logger, now: bool) {
        if !now && self.clients_checked.elapsed() < CLIENTS_CHECK {
            return;
        }
        self.clients_checked = Instant::now();
        let stamp = FileStamp::of(&self.clients_file);
        if stamp == self.clients_stamp {
            return;
        }
        self.clients_stamp = stamp;
        let path = &self.clients_file;
        let read = match stamp {
            None => Err(anyhow::anyhow!(
                "{} is gone or cannot be read",
                path.display()
            )),
            Some(_) => read_clients(path, log),
        };
        match read {
            Ok(c) => {
                info!(log, "authorized clients reloaded: the file changed";
                    "file" => %path.display(), "keys" => c.len());
                self.clients = Arc::new(c);
            }
            Err(e) => {
                error!(log, "cannot reload authorized clients; keeping the keys loaded before \
                (fix the file; it is read again when it changes)";
                "error" => format!("{e:#}"), "keys" => self.clients.len())
            }
        }
    }

    /// Decide on a request before anything runs.
    pub fn admit(&mut self, req: &Dispatch, me: &Identity) -> Result<Admitted, Box<Refused>> {
        let Some(auth) = &req.auth else {
            return if self.allow_unsigned {
                Ok(Admitted {
                    client: None,
                    request_id: None,
                })
            } else {
                Err(refused(None, None, Refusal::Unsigned))
            };
        };
        let (pk, body) = self
            .verify_request(auth)
            .map_err(|why| refused(None, None, why))?;
        self.admit_verified(req, me, pk, body)
    }

    /// Who signed a request, and what: the costly part of [`Guard::admit`],
    /// which depends on nothing but the signed envelope.
    pub fn verify_request(&self, auth: &Signed) -> Result<(PublicKey, RequestBody), Refusal> {
        let clients = &self.clients;
        let pk = security::verify_signature(auth, Purpose::Request, |id| clients.get(id).cloned())
            .map_err(|e| match e {
                AuthError::UnknownKey(fingerprint) => Refusal::UnknownClient {
                    fingerprint,
                    file: self.clients_file.clone(),
                },
                other => Refusal::Auth(other),
            })?;
        let body =
            RequestBody::from_signed(&auth.body).map_err(|e| Refusal::BadBody(Arc::new(e)))?;
        Ok((pk, body))
    }

    /// The rest of [`Guard::admit`] once [`Guard::verify_request`] passed:
    /// the signed body matches the request, is addressed to us, is fresh and
    /// the policy allows it.
    pub fn admit_verified(
        &mut self,
        req: &Dispatch,
        me: &Identity,
        pk: PublicKey,
        body: RequestBody,
    ) -> Result<Admitted, Box<Refused>> {
        let id = Some(body.id.clone());
        if body.client != pk.to_string() {
            return Err(refused(None, id, Refusal::OtherClient));
        }
        if body.cmd != req.cmd || body.service != req.service {
            return Err(refused(Some(pk), id, Refusal::Altered));
        }
        if !addressed_to(&body, me) {
            return Err(refused(
                Some(pk),
                id,
                Refusal::NotAddressed(me.node.clone()),
            ));
        }
        let now = crate::clock::now_ms();
        if let Err(e) = self.replay.check(&body.id, body.ts, now) {
            return Err(refused(Some(pk), id, Refusal::Auth(e)));
        }
        // A manager that held the request past the client's deadline (stalled,
        // or not to be trusted with it) does not get it run here either.
        if let Some(ms) = body.late_by(now) {
            return Err(refused(Some(pk), id, Refusal::TooLate(ms)));
        }
        match self.policy.decide(&pk, &body.cmd, &body.service) {
            Decision::Allow { .. } => Ok(Admitted {
                client: Some(pk),
                request_id: id,
            }),
            Decision::Deny { reason } => Err(refused(Some(pk), id, Refusal::Policy(reason))),
        }
    }

    /// `agent.shutdown` needs a signed request of an authorized client unless
    /// unsigned peers are allowed.
    pub fn admit_mgmt(&mut self, req: &MgmtRequest, node: &str) -> Result<(), MgmtRefusal> {
        if self.allow_unsigned {
            return Ok(());
        }
        let auth = req.auth.as_ref().ok_or(MgmtRefusal::Unsigned)?;
        let clients = &self.clients;
        security::verify_signature(auth, Purpose::Request, |id| clients.get(id).cloned())?;
        let body =
            MgmtBody::from_signed(&auth.body).map_err(|e| MgmtRefusal::BadBody(Arc::new(e)))?;
        if body.cmd != req.cmd {
            return Err(MgmtRefusal::OtherCommand);
        }
        // Bound to this node, so a shutdown signed for one agent stops no other.
        if body.node.as_deref() != Some(node) {
            return Err(MgmtRefusal::NotAddressed(node.to_owned()));
        }
        Ok(self
            .replay
            .check(&body.id, body.ts, crate::clock::now_ms())?)
    }

    /// A fresh signed presence token for our subscription.
    pub fn presence(&self, instance: &str) -> String {
        let ts = self.stamp();
        let signed = security::sign(
            &self.key,
            Purpose::Announce,
            &Presence::signed_text(instance, ts),
        );
        Presence {
            instance: instance.to_owned(),
            signed: Some((ts, signed)),
        }
        .token()
    }

    /// Sign an announcement (proof that we hold the key we announce).
    /// The whole announcement is signed (with our key line and the time), so
    /// that nobody can rewrite a heartbeat into a goodbye or change our topics.
    pub fn sign_announce(&self, a: &mut Announce) {
        a.auth = None;
        let body = SignedAnnounce {
            announce: a.clone(),
            key: self.key.public().to_string(),
            ts: self.stamp(),
        };
        a.auth = Some(security::sign(&self.key, Purpose::Announce, &body));
    }
}

/// Where the agent whose key is `key_file` journals the requests it accepted.
pub fn replay_journal(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".replay");
    PathBuf::from(name)
}

/// The frame for a result: signed, and sealed to the client when we verified
/// its key; signed in clear when the request was signed but did not verify (a
/// refusal is no secret); the plain 0.1 shape for an unsigned request (a 0.1
/// client, served when allowed).
pub fn result_frame(
    key: &KeyPair,
    r: &ResultMsg,
    client: Option<&PublicKey>,
    request_id: Option<String>,
    signed_request: bool,
) -> Vec<u8> {
    // The sink takes at most RESULT_LIMIT: escaping can make capped outputs
    // bigger than that, so they are cut further until the result fits. Its
    // JSON, sealed (4/3), tells first; the whole frame is checked after.
    let mut r = std::borrow::Cow::Borrowed(r);
    let sealed_size = |r: &ResultMsg| p::encode(r).len() / 3 * 4 + 4096;
    while sealed_size(&r) > p::RESULT_LIMIT && r.to_mut().shrink_output() {}
    let mut frame = one_frame(key, &r, client, request_id.clone(), signed_request);
    while frame.len() > p::RESULT_LIMIT && r.to_mut().shrink_output() {
        frame = one_frame(key, &r, client, request_id.clone(), signed_request);
    }
    frame
}

fn one_frame(
    key: &KeyPair,
    r: &ResultMsg,
    client: Option<&PublicKey>,
    request_id: Option<String>,
    signed_request: bool,
) -> Vec<u8> {
    if client.is_none() && !signed_request {
        return p::encode(r);
    }
    let sealed = match client.map(|c| key.seal_to(c, &p::encode(r))) {
        None => None,
        Some(Ok(s)) => Some(s),
        // Parsing refuses such keys; never send a result readable by all.
        Some(Err(e)) => {
            let uuid = r.uuid.as_deref().unwrap_or_default();
            let node = key.name();
            let withheld = crate::agent::refusal(
                node,
                uuid,
                r.cmd.as_deref(),
                format!("result withheld: cannot seal to the client's key: {e}"),
            );
            return result_frame(key, &withheld, None, request_id, true);
        }
    };
    let uuid = r.uuid.clone().unwrap_or_default();
    let node = key.name().to_owned();
    let status = r.effective_status();
    let body = SignedResult {
        uuid: uuid.clone(),
        node: node.clone(),
        status,
        request_id,
        sealed,
        result: client.is_none().then(|| r.clone()),
    };
    let auth = security::sign(key, Purpose::Result, &body);
    let msg = if client.is_some() {
        "signed result, sealed to the client"
    } else {
        "signed result"
    };
    p::encode(&ResultEnvelope {
        v: p::PROTOCOL_VERSION,
        uuid,
        node,
        status,
        msg: msg.into(),
        auth,
    })
}

fn refused(client: Option<PublicKey>, request_id: Option<String>, why: Refusal) -> Box<Refused> {
    Box::new(Refused {
        client,
        request_id,
        why,
    })
}

/// Whether the signed target covers this node (topic, node list and glob).
fn addressed_to(body: &RequestBody, me: &Identity) -> bool {
    me.topics.iter().any(|t| t == &body.topic)
        && body.nodes.as_ref().is_none_or(|n| n.contains(&me.node))
        && body.glob.as_ref().is_none_or(|g| {
            globset::Glob::new(g).is_ok_and(|g| g.compile_matcher().is_match(&me.node))
        })
}

/// What tells a changed file apart from the one we read: an edit in place
/// (modification time, size) or a replacement (inode, as editors and
/// configuration management write a new file and rename it over the old).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Authorized client keys by key id.
pub type Clients = Arc<HashMap<String, PublicKey>>;

/// The authorized client keys and the policy of an agent's config.
pub fn load_trust(config: &AgentConfig, log: &Logger) -> Result<(Clients, Arc<Policy>)> {
    let clients = read_clients(&config.authorized_clients(), log)?;
    let policy = Policy::new(&config.policy).context("invalid [[policy]] in the agent's config")?;
    if config.policy.is_empty() && !config.allow_unsigned {
        warn!(
            log,
            "no [[policy]] rules: every signed request is refused (default deny)"
        );
    }
    Ok((Arc::new(clients), Arc::new(policy)))
}

fn read_clients(path: &Path, log: &Logger) -> Result<HashMap<String, PublicKey>> {
    // Refused if anyone but root and us could write it (they could add a key).
    let text = match security::keyfile::read_trusted(path) {
        Ok(t) => t,
        Err(security::KeyFileError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            warn!(log, "no authorized clients file: every signed request is refused"; "file" => %path.display());
            return Ok(HashMap::new());
        }
        Err(e) => return Err(e.into()),
    };
    let keys = security::parse_key_lines(&text)
        .with_context(|| format!("invalid key in {}", path.display()))?;
    Ok(keys.into_iter().map(|k| (k.key_id(), k)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ServiceRequest, AGENT_SHUTDOWN};

    /// Two outputs at the largest max_output, all control bytes (6 bytes of
    /// JSON each), sealed: cut until the frame fits the sink's limit.
    #[test]
    fn a_result_bigger_than_the_sink_takes_is_cut_to_fit() {
        let key = KeyPair::generate(Role::Agent, "web1").unwrap();
        let alice = KeyPair::generate(Role::Client, "alice").unwrap();
        let out = "\u{1}".repeat(p::MAX_OUTPUT_LIMIT as usize);
        let mut r = p::ResultMsg::no_response("u", "web1", "x");
        r.result = Some(p::ExecResult {
            node: "web1".into(),
            service: "s".into(),
            returncode: 0,
            stdout: p::Output::Text(out.clone()),
            stderr: p::Output::Text(out),
            system: "Linux".into(),
            version: "1".into(),
        });
        let frame = result_frame(&key, &r, Some(alice.public()), Some("id".into()), true);
        assert!(frame.len() <= p::RESULT_LIMIT, "{} bytes", frame.len());
        let opened: p::ResultEnvelope = serde_json::from_slice(&frame).unwrap();
        let body = p::SignedResult::from_signed(&opened.auth.body).unwrap();
        let plain = crate::security::open(&alice, body.sealed.as_ref().unwrap()).unwrap();
        let back: p::ResultMsg = serde_json::from_slice(&plain).unwrap();
        assert!(back.truncated);
        assert!(back
            .result
            .unwrap()
            .stdout
            .text()
            .ends_with("to fit a result message]"));
    }

    struct Fixture {
        guard: Guard,
        me: Identity,
        alice: KeyPair,
    }

    /// web1 (topics any, Linux, web, web1) trusting alice, whose policy lets
    /// her restart and query anything but sshd.
    fn fixture(allow_unsigned: bool) -> Fixture {
        let alice = KeyPair::generate(Role::Client, "alice").unwrap();
        let key = KeyPair::generate(Role::Agent, "web1").unwrap();
        let clients: Clients = Arc::new(HashMap::from([(alice.key_id(), alice.public().clone())]));
        let policy = Policy::parse(&format!(
            r#"[[policy]]
name = "ops"
keys = ["{}"]
commands = ["status", "restart"]
services = ["*"]
deny = [{{ services = ["sshd"] }}]
"#,
            alice.public()
        ))
        .unwrap();
        let config = AgentConfig {
            allow_unsigned,
            ..AgentConfig::default()
        };
        let me = Identity {
            node: "web1".into(),
            system: "Linux".into(),
            version: "v".into(),
            topics: ["Linux", "any", "web", "web1"].map(String::from).to_vec(),
        };
        Fixture {
            guard: Guard::new(Arc::new(key), clients, Arc::new(policy), &config),
            me,
            alice,
        }
    }

    /// A dispatch of `cmd service` to `topic`, signed by `key` over a body `edit` may change.
    fn dispatch(
        key: Option<&KeyPair>,
        cmd: &str,
        service: &str,
        edit: impl FnOnce(&mut RequestBody),
    ) -> Dispatch {
        let req = ServiceRequest::new(cmd, service, "web");
        let auth = key.map(|key| {
            let mut body = RequestBody::for_request(
                &req,
                uuid::Uuid::new_v4().simple().to_string(),
                crate::clock::now_ms(),
                key.public().to_string(),
            );
            edit(&mut body);
            security::sign_body(key, Purpose::Request, &serde_json::to_value(&body).unwrap())
        });
        Dispatch {
            cmd: req.cmd,
            service: req.service,
            topic: req.topic,
            uuid: "j1".into(),
            v: Some(2),
            auth,
        }
    }

    #[test]
    fn guard_decides_before_anything_runs() {
        let f = fixture(false);
        let alice = Some(&f.alice);
        let eve = KeyPair::generate(Role::Client, "eve").unwrap();
        let mut swapped = dispatch(alice, "restart", "nginx", |_| {});
        swapped.cmd = "stop".into();
        // (case, allow_unsigned, dispatch, Ok(signed?) or Err(part of the reason))
        let cases: Vec<(&str, bool, Dispatch, Result<bool, &str>)> = vec![
            (
                "unsigned, secure",
                false,
                dispatch(None, "status", "nginx", |_| {}),
                Err("unsigned request refused"),
            ),
            (
                "unsigned, allowed",
                true,
                dispatch(None, "status", "nginx", |_| {}),
                Ok(false),
            ),
            (
                "authorized and allowed",
                false,
                dispatch(alice, "restart", "nginx", |_| {}),
                Ok(true),
            ),
            (
                "unknown client",
                false,
                dispatch(Some(&eve), "status", "nginx", |_| {}),
                Err("not in this agent's authorized clients"),
            ),
            (
                "command swapped on the way",
                false,
                swapped,
                Err("differ from what the client signed"),
            ),
            (
                "topic not ours",
                false,
                dispatch(alice, "status", "nginx", |b| b.topic = "db".into()),
                Err("did not address node"),
            ),
            (
                "node list without us",
                false,
                dispatch(alice, "status", "nginx", |b| {
                    b.nodes = Some(vec!["web2".into()])
                }),
                Err("did not address node"),
            ),
            (
                "node list with us",
                false,
                dispatch(alice, "status", "nginx", |b| {
                    b.nodes = Some(vec!["web1".into()])
                }),
                Ok(true),
            ),
            (
                "glob without us",
                false,
                dispatch(alice, "status", "nginx", |b| b.glob = Some("db*".into())),
                Err("did not address node"),
            ),
            (
                "policy: command not allowed",
                false,
                dispatch(alice, "stop", "nginx", |_| {}),
                Err("refused by policy"),
            ),
            (
                "policy: denied service",
                false,
                dispatch(alice, "status", "sshd", |_| {}),
                Err("refused by policy"),
            ),
            (
                "body names another client",
                false,
                dispatch(alice, "status", "nginx", |b| {
                    b.client = eve.public().to_string()
                }),
                Err("names another client key"),
            ),
            (
                "stale",
                false,
                dispatch(alice, "status", "nginx", |b| b.ts -= 10 * 60 * 1000),
                Err("expired"),
            ),
            (
                "after the client's deadline for an accept",
                false,
                dispatch(alice, "status", "nginx", |b| b.accept_by = Some(b.ts - 1)),
                Err("after the client's deadline"),
            ),
            (
                "before the client's deadline for an accept",
                false,
                dispatch(alice, "status", "nginx", |b| {
                    b.accept_by = Some(b.ts + 60_000)
                }),
                Ok(true),
            ),
        ];
        for (name, allow_unsigned, d, want) in cases {
            let mut g = fixture(allow_unsigned);
            // Trust this fixture's alice in the fresh guard.
            g.guard.clients = f.guard.clients.clone();
            g.guard.policy = f.guard.policy.clone();
            match (g.guard.admit(&d, &f.me), want) {
                (Ok(a), Ok(signed)) => assert_eq!(a.client.is_some(), signed, "{name}"),
                (Err(r), Err(needle)) => {
                    assert!(r.why.to_string().contains(needle), "{name}: {:?}", r.why)
                }
                (Ok(_), Err(needle)) => panic!("{name}: admitted, want {needle:?}"),
                (Err(r), Ok(_)) => panic!("{name}: refused: {}", r.why),
            }
        }
    }

    /// The refusal texts are the wire's `msg`: typing them changed no byte.
    #[test]
    fn refusals_keep_their_texts_and_name_a_reason() {
        let cases: Vec<(Refusal, &str, &str)> = vec![
            (
                Refusal::Unsigned,
                "unsigned request refused: this agent runs signed requests only",
                "unsigned",
            ),
            (
                Refusal::UnknownClient {
                    fingerprint: "cf726de96526081d".into(),
                    file: "/etc/service-mgr/authorized_clients".into(),
                },
                "request refused: client key cf726de96526081d is not in this agent's authorized \
                 clients (/etc/service-mgr/authorized_clients)",
                "unknown_key",
            ),
            (
                Refusal::Auth(AuthError::BadSignature),
                "request refused: bad signature: the message was altered or not signed by the key it names",
                "bad_signature",
            ),
            (
                Refusal::Auth(AuthError::Replayed("r1".into())),
                "request refused: request r1 replayed: it was seen before",
                "replay",
            ),
            (
                Refusal::Auth(AuthError::Expired {
                    age_ms: 70000,
                    window_ms: 60000,
                }),
                "request refused: request expired: signed 70000 ms ago, the limit is 60000 ms \
                 (are the clocks in sync?)",
                "expired",
            ),
            (
                Refusal::NotAddressed("web1".into()),
                "request refused: the client did not address node \"web1\"",
                "not_addressed",
            ),
            (
                Refusal::Policy("no rule allows it".into()),
                "refused by policy: no rule allows it",
                "policy",
            ),
            (
                Refusal::Busy(64),
                "agent busy: 64 commands running (max_concurrent); try again later",
                "busy",
            ),
            (
                Refusal::NotAllowed {
                    cmd: "stop".into(),
                    allowed: "status, restart".into(),
                },
                "command \"stop\" is not allowed on this agent (allowed: status, restart)",
                "not_allowed",
            ),
            (
                Refusal::BadName(p::check_service_name("../x").unwrap_err()),
                "service name \"../x\" may not start with '-' or '.'",
                "bad_name",
            ),
        ];
        for (r, text, reason) in cases {
            assert_eq!(r.to_string(), text);
            assert_eq!(r.reason(), reason, "{text}");
        }
        let m = MgmtRefusal::NotAddressed("web1".into());
        assert_eq!(
            m.to_string(),
            "the signed request is not addressed to node \"web1\""
        );
        assert_eq!(m.reason(), "not_addressed");
    }

    #[test]
    fn guard_refuses_a_replay_and_answers_the_verified_client() {
        let mut f = fixture(false);
        let d = dispatch(Some(&f.alice), "status", "nginx", |_| {});
        assert!(f.guard.admit(&d, &f.me).is_ok());
        let r = f.guard.admit(&d, &f.me).err().unwrap();
        assert!(r.why.to_string().contains("replayed"), "{}", r.why);
        assert_eq!(r.why.reason(), "replay");
        // The refusal is still sealed to the client whose signature held.
        assert_eq!(r.client.as_ref(), Some(f.alice.public()));
    }

    #[test]
    fn what_the_agent_signs_is_dated_strictly_later_each_time() {
        let f = fixture(false);
        let stamps: Vec<u64> = (0..1000).map(|_| f.guard.stamp()).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            replay_journal(Path::new("/etc/service-mgr/agent.key")),
            Path::new("/etc/service-mgr/agent.key.replay")
        );
    }

    #[test]
    fn guard_decides_on_shutdowns() {
        let mut f = fixture(false);
        let shutdown = |key: &KeyPair, node: Option<&str>| {
            let mut req = MgmtRequest::new(AGENT_SHUTDOWN);
            let body = MgmtBody {
                cmd: AGENT_SHUTDOWN.into(),
                id: uuid::Uuid::new_v4().simple().to_string(),
                ts: crate::clock::now_ms(),
                node: node.map(str::to_owned),
            };
            req.auth = Some(security::sign_body(
                key,
                Purpose::Request,
                &serde_json::to_value(&body).unwrap(),
            ));
            req
        };
        let eve = KeyPair::generate(Role::Client, "eve").unwrap();
        let once = shutdown(&f.alice, Some("web1"));
        let cases: Vec<(&str, MgmtRequest, Result<(), &str>)> = vec![
            (
                "unsigned",
                MgmtRequest::new(AGENT_SHUTDOWN),
                Err("needs a signed request"),
            ),
            ("for us", once.clone(), Ok(())),
            ("the same again", once, Err("replayed")),
            (
                "for another node",
                shutdown(&f.alice, Some("web2")),
                Err("not addressed to node"),
            ),
            (
                "for the manager",
                shutdown(&f.alice, None),
                Err("not addressed to node"),
            ),
            (
                "unknown client",
                shutdown(&eve, Some("web1")),
                Err("not known here"),
            ),
        ];
        for (name, req, want) in cases {
            match (f.guard.admit_mgmt(&req, "web1"), want) {
                (Ok(()), Ok(())) => {}
                (Err(why), Err(needle)) => {
                    assert!(why.to_string().contains(needle), "{name}: {why:?}")
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let mut open = fixture(true);
        assert!(open
            .guard
            .admit_mgmt(&MgmtRequest::new(AGENT_SHUTDOWN), "web1")
            .is_ok());
    }
}
