//! Keys, signatures, sealed results and authorization: what lets an agent trust
//! a request whoever relayed it.
//!
//! Anyone can reach every port and the manager is only a relay, so protection
//! is end to end. A client signs each request (ed25519); every agent checks the
//! signature itself, then freshness ([`ReplayGuard`]) and its own [`Policy`],
//! before running anything. Agents sign results and [`seal`] them to the
//! requesting client's x25519 key. The manager admits keys salt-style
//! ([`KeyStore`]: pending/accepted/rejected) and drops requests from keys it has
//! not accepted: that spares the agents work, it is not what protects them.
//!
//! Wire forms:
//! - public key line: `smgr1 client alice <base64url-nopad(ed25519 pub || x25519 pub)>`;
//!   the last field is the *key id* that messages carry.
//! - signed envelope: `{"key": KEY_ID, "body": "<JSON text>", "sig": "<base64>"}`; the
//!   signature covers `service-mgr/v2\0<purpose>\0` then the body bytes, so a signed
//!   request never passes for a result or an announcement.
//! - sealed data: `{"epk": ..., "nonce": ..., "ct": ...}` (standard base64): ephemeral
//!   X25519 with the recipient's key, HKDF-SHA256, ChaCha20-Poly1305.
//!
//! Suggested use for results: sign the result (with the request id and the client's
//! key id in the body), then seal the serialized [`Signed`] to the client; the client
//! opens, verifies, and checks that the answer names its own request.

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use globset::{Glob, GlobSet, GlobSetBuilder};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use x25519_dalek::{EphemeralSecret, PublicKey as BoxPublic, SharedSecret, StaticSecret};

/// First word of a public key line; bumped if the key format ever changes.
pub const KEY_PREFIX: &str = "smgr1";
/// HKDF `info` for sealed results.
const SEAL_INFO: &[u8] = b"service-mgr/v2 result";
/// Longest request id the [`ReplayGuard`] remembers: bounds its memory per entry.
pub const MAX_REQUEST_ID: usize = 128;
/// Pending keys the [`KeyStore`] holds at most: anyone may announce a key, so
/// without a cap a stranger could fill the manager's disk.
pub const MAX_PENDING: usize = 1000;

/// Why a key, message or request was refused. The text is meant for the user
/// at the other end, so it says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("key {0} is not known here (has it been accepted?)")]
    UnknownKey(String),
    #[error("key {0} has not been accepted by the manager (it is pending or was rejected)")]
    NotAccepted(String),
    #[error("key {fingerprint} is a {role} key; a {purpose} must be signed by a {expected} key")]
    WrongRole {
        fingerprint: String,
        role: Role,
        purpose: Purpose,
        expected: &'static str,
    },
    #[error("bad signature: the message was altered or not signed by the key it names")]
    BadSignature,
    #[error("request expired: signed {age_ms} ms ago, the limit is {window_ms} ms (are the clocks in sync?)")]
    Expired { age_ms: u64, window_ms: u64 },
    #[error(
        "request from the future: dated {ahead_ms} ms ahead, the limit is {window_ms} ms \
             (are the clocks in sync?)"
    )]
    FromTheFuture { ahead_ms: u64, window_ms: u64 },
    #[error("request {0} replayed: it was seen before")]
    Replayed(String),
    #[error("too many recent requests ({0} remembered); try again later")]
    ReplayCacheFull(usize),
    #[error("malformed security data: {0}")]
    Malformed(String),
    #[error("cannot decrypt: not addressed to this key, or altered on the way")]
    Decrypt,
}

fn malformed(msg: impl Into<String>) -> AuthError {
    AuthError::Malformed(msg.into())
}

/// What a key is for; requests must come from clients, results from agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Agent,
    Manager,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Agent => "agent",
            Role::Manager => "manager",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Role, AuthError> {
        match s {
            "client" => Ok(Role::Client),
            "agent" => Ok(Role::Agent),
            "manager" => Ok(Role::Manager),
            _ => Err(malformed(format!(
                "role must be client, agent or manager, not {s:?}"
            ))),
        }
    }
}

/// Key names go into one-line key text, file listings and policies, so they
/// are plain words: letters, digits and `. _ @ : + -`, 1 to 64 bytes, not
/// starting with `-` or `.`.
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@:+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(malformed(format!(
            "key name {name:?} must be 1-64 letters, digits or `._@:+-`, not starting with `-` or `.`"
        )))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        s.push_str(&format!("{b:02x}"));
        s
    })
}

fn decode_array<const N: usize>(
    engine: &impl Engine,
    text: &str,
    what: &str,
) -> Result<[u8; N], AuthError> {
    let bytes = engine
        .decode(text)
        .map_err(|_| malformed(format!("{what} is not valid base64")))?;
    bytes
        .try_into()
        .map_err(|v: Vec<u8>| malformed(format!("{what} must be {N} bytes, got {}", v.len())))
}

/// Whether an x25519 public key is a point of small order (on the curve or
/// its twist), with which every shared secret is predictable. This is the
/// check libsodium makes, by table: the u-coordinates of the torsion points
/// and -1, ignoring the unused top bit, in canonical or `+p` form. (A
/// Diffie-Hellman per parsed key did the same at the price of a scalar
/// multiplication: a third of a client's time over 1000 results.)
fn is_low_order(u: &[u8; 32]) -> bool {
    use std::sync::OnceLock;
    static WEAK: OnceLock<Vec<[u8; 32]>> = OnceLock::new();
    let weak = WEAK.get_or_init(|| {
        let mut list: Vec<[u8; 32]> = curve25519_dalek::constants::EIGHT_TORSION
            .iter()
            .map(|t| t.to_montgomery().to_bytes())
            .collect();
        // p - 1, of order 4 on the twist.
        let mut minus_one = [0xff; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        list.push(minus_one);
        list
    });
    let mut v = *u;
    v[31] &= 0x7f;
    // Values p..2^255-1 are the non-canonical forms of 0..18.
    if v[31] == 0x7f && v[1..31].iter().all(|&b| b == 0xff) && v[0] >= 0xed {
        v = [0; 32];
        v[0] = u[0] - 0xed;
    }
    weak.contains(&v)
}

/// The public half of an [`KeyPair`]: what peers store, trust and address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    role: Role,
    name: String,
    sign: VerifyingKey,
    boxk: BoxPublic,
}

impl PublicKey {
    /// Build from the 64 key bytes, refusing keys no honest peer has: invalid
    /// or weak ed25519 points, and low-order x25519 points (which would make
    /// every result sealed to them readable by anyone).
    fn from_parts(role: Role, name: &str, bytes: &[u8; 64]) -> Result<PublicKey, AuthError> {
        check_name(name)?;
        let mut half = [0u8; 32];
        half.copy_from_slice(&bytes[..32]);
        let sign =
            VerifyingKey::from_bytes(&half).map_err(|_| malformed("not a valid ed25519 key"))?;
        if sign.is_weak() {
            return Err(malformed("weak ed25519 key"));
        }
        half.copy_from_slice(&bytes[32..]);
        if is_low_order(&half) {
            return Err(malformed("weak x25519 key"));
        }
        let boxk = BoxPublic::from(half);
        Ok(PublicKey {
            role,
            name: name.to_owned(),
            sign,
            boxk,
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn name(&self) -> &str {
        &self.name
    }

    /// ed25519 public key || x25519 public key.
    pub fn bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(self.sign.as_bytes());
        b[32..].copy_from_slice(self.boxk.as_bytes());
        b
    }

    /// The x25519 half as a sealing sender names it (`Sealed::epk`).
    pub fn box_key_base64(&self) -> String {
        STANDARD.encode(self.boxk.as_bytes())
    }

    /// The key as messages name it: base64url (no padding) of [`bytes`](Self::bytes).
    /// Decoding is canonical, so equal keys always have equal ids.
    pub fn key_id(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes())
    }

    /// Short form for humans and file names: 16 hex digits of SHA-256 of the key bytes.
    pub fn fingerprint(&self) -> String {
        hex(&Sha256::digest(self.bytes())[..8])
    }
}

/// The fingerprint (the key store's file name) of a key id; `None` if the id
/// is not one.
pub fn fingerprint_of_id(key_id: &str) -> Option<String> {
    let bytes: [u8; 64] = URL_SAFE_NO_PAD.decode(key_id).ok()?.try_into().ok()?;
    Some(fingerprint_of(&bytes))
}

/// The fingerprint of a key id, for errors about keys we do not hold.
fn fingerprint_of(key_bytes: &[u8; 64]) -> String {
    hex(&Sha256::digest(key_bytes)[..8])
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{KEY_PREFIX} {} {} {}",
            self.role,
            self.name,
            self.key_id()
        )
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = AuthError;
    /// Parse `smgr1 ROLE NAME KEY_ID` (blanks around and between fields are ignored).
    fn from_str(line: &str) -> Result<PublicKey, AuthError> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [prefix, role, name, id] = fields[..] else {
            return Err(malformed(format!(
                "a public key is `{KEY_PREFIX} ROLE NAME KEY` on one line, got {} fields",
                fields.len()
            )));
        };
        if prefix != KEY_PREFIX {
            return Err(malformed(format!(
                "a public key line starts with `{KEY_PREFIX}`, not {prefix:?}"
            )));
        }
        let bytes = decode_array::<64>(&URL_SAFE_NO_PAD, id, "key")?;
        // One key, one id (ids are compared as text): X25519 ignores the top
        // bit of its last byte, so two ids would name one key (found by fuzzing).
        if URL_SAFE_NO_PAD.encode(bytes) != id || bytes[63] & 0x80 != 0 {
            return Err(malformed("the key id is not in canonical form".to_owned()));
        }
        PublicKey::from_parts(role.parse()?, name, &bytes)
    }
}

/// Parse an authorized-keys text: one public key line per line; blank lines
/// and lines starting with `#` are skipped. Errors name the line.
pub fn parse_key_lines(text: &str) -> Result<Vec<PublicKey>, AuthError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            l.parse()
                .map_err(|e| malformed(format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// A peer's secret keys: ed25519 to sign, x25519 to receive sealed results.
/// Both secrets are wiped from memory on drop by the dalek crates.
pub struct KeyPair {
    sign: SigningKey,
    boxk: StaticSecret,
    public: PublicKey,
    /// AEAD keys shared with peers' x25519 keys, see [`KeyPair::seal_to`].
    shared: std::sync::Mutex<HashMap<([u8; 32], bool), Key>>,
}

/// Peers whose shared AEAD key a key pair remembers (then it starts over).
const SHARED_KEYS: usize = 4096;

/// The secret key file, TOML with standard base64 fields.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    role: Role,
    name: String,
    sign_secret: String,
    box_secret: String,
}

impl KeyPair {
    /// A new random identity (OS randomness).
    pub fn generate(role: Role, name: &str) -> Result<KeyPair, AuthError> {
        check_name(name)?;
        Ok(KeyPair::from_secrets(
            role,
            name,
            SigningKey::generate(&mut OsRng),
            StaticSecret::random_from_rng(OsRng),
        ))
    }

    fn from_secrets(role: Role, name: &str, sign: SigningKey, boxk: StaticSecret) -> KeyPair {
        let public = PublicKey {
            role,
            name: name.to_owned(),
            sign: sign.verifying_key(),
            boxk: BoxPublic::from(&boxk),
        };
        KeyPair {
            sign,
            boxk,
            public,
            shared: Default::default(),
        }
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }
    pub fn role(&self) -> Role {
        self.public.role
    }
    pub fn name(&self) -> &str {
        &self.public.name
    }
    pub fn key_id(&self) -> String {
        self.public.key_id()
    }

    /// The secret file text.
    pub fn to_toml(&self) -> String {
        let file = SecretFile {
            role: self.role(),
            name: self.name().to_owned(),
            sign_secret: STANDARD.encode(self.sign.to_bytes()),
            box_secret: STANDARD.encode(self.boxk.to_bytes()),
        };
        let body = toml::to_string(&file).expect("the secret file always serializes");
        format!(
            "# service-mgr secret key of {}: keep it private (mode 0600)\n{body}",
            self.public
        )
    }

    pub fn from_toml(text: &str) -> Result<KeyPair, AuthError> {
        let file: SecretFile =
            toml::from_str(text).map_err(|e| malformed(e.to_string().trim_end()))?;
        check_name(&file.name)?;
        let sign = decode_array::<32>(&STANDARD, &file.sign_secret, "sign_secret")?;
        let boxk = decode_array::<32>(&STANDARD, &file.box_secret, "box_secret")?;
        Ok(KeyPair::from_secrets(
            file.role,
            &file.name,
            SigningKey::from_bytes(&sign),
            StaticSecret::from(boxk),
        ))
    }

    /// Write the secret file, mode 0600. Without `force` an existing file is
    /// an error; with it the file is replaced atomically.
    pub fn save(&self, path: &Path, force: bool) -> anyhow::Result<()> {
        write_file(path, self.to_toml().as_bytes(), 0o600, force)
    }

    /// Read a secret file, refusing one that group or others can access (as ssh does).
    pub fn load(path: &Path) -> anyhow::Result<KeyPair> {
        let p = path.display();
        let mut f = File::open(path).with_context(|| format!("cannot open secret key file {p}"))?;
        let mode = f
            .metadata()
            .with_context(|| format!("cannot stat {p}"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "secret key file {p} is accessible by group or others (mode {:03o}); run `chmod 600 {p}`",
                mode & 0o777
            );
        }
        let mut text = String::new();
        f.read_to_string(&mut text)
            .with_context(|| format!("cannot read {p}"))?;
        KeyPair::from_toml(&text).with_context(|| format!("invalid secret key file {p}"))
    }
}

impl fmt::Debug for KeyPair {
    /// Never prints the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({})", self.public)
    }
}

/// Write `data` to `path` with exactly `mode`. Without `force`, `create_new`
/// (O_EXCL: a symlink planted at `path` is not followed). With it, a temp file
/// in the same directory renamed over `path`: readers never see half a key and
/// the mode is never wider than asked.
fn write_file(path: &Path, data: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    let target = if force {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
        let mut rnd = [0u8; 6];
        OsRng.fill_bytes(&mut rnd);
        dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), hex(&rnd)))
    } else {
        path.to_owned()
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&target)
        .map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists if !force => anyhow!(
                "{} already exists; refusing to overwrite it (use --force to replace it)",
                path.display()
            ),
            _ => anyhow::Error::new(e).context(format!("cannot create {}", target.display())),
        })?;
    let written = (|| {
        // The umask may have taken bits we want (0644 for a .pub file).
        f.set_permissions(Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        if force {
            fs::rename(&target, path)?;
        }
        Ok::<_, std::io::Error>(())
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&target);
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    })
}

/// Create a key pair: PATH gets the secret (0600), PATH.pub the public key line (0644).
pub fn keygen(path: &Path, role: Role, name: &str, force: bool) -> anyhow::Result<PublicKey> {
    let id = KeyPair::generate(role, name)?;
    id.save(path, force)?;
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    // The .pub file is derived data: always replace it, so it matches PATH.
    write_file(
        Path::new(&pub_path),
        format!("{}\n", id.public).as_bytes(),
        0o644,
        true,
    )?;
    Ok(id.public.clone())
}

/// What a signature is for. Each purpose signs under its own prefix and
/// accepts only certain signer roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A client's request, verified by the manager and by every agent.
    Request,
    /// An agent's result, verified by the client.
    Result,
    /// A key introducing itself to the manager for admission.
    Announce,
}

impl Purpose {
    fn domain(self) -> &'static [u8] {
        match self {
            Purpose::Request => b"service-mgr/v2\0request\0",
            Purpose::Result => b"service-mgr/v2\0result\0",
            Purpose::Announce => b"service-mgr/v2\0announce\0",
        }
    }

    /// Whether `role` may sign for this purpose, or the roles that may.
    fn allows(self, role: Role) -> Result<(), &'static str> {
        match (self, role) {
            (Purpose::Request, Role::Client)
            | (Purpose::Result, Role::Agent)
            | (Purpose::Announce, Role::Agent | Role::Client) => Ok(()),
            (Purpose::Request, _) => Err("client"),
            (Purpose::Result, _) => Err("agent"),
            (Purpose::Announce, _) => Err("client or agent"),
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::Request => "request",
            Purpose::Result => "result",
            Purpose::Announce => "announcement",
        })
    }
}

/// A JSON body with its signature. The body travels as the exact text that
/// was signed, so no canonical JSON is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// Key id of the signer.
    pub key: String,
    /// The JSON text signed.
    pub body: String,
    /// Standard base64 of the ed25519 signature.
    pub sig: String,
}

fn signed_bytes(purpose: Purpose, body: &str) -> Vec<u8> {
    [purpose.domain(), body.as_bytes()].concat()
}

/// Sign `body` for `purpose`.
pub fn sign_body(id: &KeyPair, purpose: Purpose, body: &Value) -> Signed {
    let text = body.to_string();
    let sig = id.sign.sign(&signed_bytes(purpose, &text));
    Signed {
        key: id.key_id(),
        body: text,
        sig: STANDARD.encode(sig.to_bytes()),
    }
}

/// Check a signed body: the key must be one `trusted` returns for its id, of a
/// role that may sign for `purpose`, and the signature must verify (strictly:
/// no malleable signatures). Returns the signer and the parsed body.
pub fn verify(
    signed: &Signed,
    purpose: Purpose,
    trusted: impl Fn(&str) -> Option<PublicKey>,
) -> Result<(PublicKey, Value), AuthError> {
    let bytes = decode_array::<64>(&URL_SAFE_NO_PAD, &signed.key, "signer key id")?;
    let key = match trusted(&signed.key) {
        Some(k) if k.bytes() == bytes => k,
        _ => return Err(AuthError::UnknownKey(fingerprint_of(&bytes))),
    };
    if let Err(expected) = purpose.allows(key.role) {
        return Err(AuthError::WrongRole {
            fingerprint: key.fingerprint(),
            role: key.role,
            purpose,
            expected,
        });
    }
    let sig = Signature::from_bytes(&decode_array::<64>(&STANDARD, &signed.sig, "signature")?);
    key.sign
        .verify_strict(&signed_bytes(purpose, &signed.body), &sig)
        .map_err(|_| AuthError::BadSignature)?;
    let body = serde_json::from_str(&signed.body)
        .map_err(|e| malformed(format!("signed body is not JSON: {e}")))?;
    Ok((key, body))
}

/// Check an announcement: a body `{"key": "<public key line>", ...}` signed
/// by that very key, which proves the sender holds its secret. The key is not
/// trusted by this; hand it to [`KeyStore::submit`].
pub fn verify_announce(signed: &Signed) -> Result<(PublicKey, Value), AuthError> {
    let body: Value = serde_json::from_str(&signed.body)
        .map_err(|e| malformed(format!("signed body is not JSON: {e}")))?;
    let line = body
        .get("key")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("an announcement needs a `key` field with the public key line"))?;
    let key: PublicKey = line.parse()?;
    if key.key_id() != signed.key {
        return Err(malformed(
            "the announcement is signed by another key than the one it announces",
        ));
    }
    verify(signed, Purpose::Announce, |_| Some(key.clone()))
}

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

/// Data only the holder of one x25519 key can read (standard base64 fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Ephemeral x25519 public key of the sender.
    pub epk: String,
    /// 12-byte ChaCha20-Poly1305 nonce.
    pub nonce: String,
    /// Ciphertext and tag.
    pub ct: String,
}

/// The AEAD key: HKDF-SHA256 over the shared secret, salted with both public
/// keys so that the key is bound to this sender and recipient.
fn seal_key(shared: &SharedSecret, epk: &BoxPublic, to: &BoxPublic) -> Key {
    let salt = [epk.as_bytes().as_slice(), to.as_bytes()].concat();
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes())
        .expand(SEAL_INFO, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Key::from(okm)
}

/// Encrypt `plaintext` so that only `to` can read it. Anyone can seal to
/// anyone: authenticity comes from signing, not from sealing.
pub fn seal(to: &PublicKey, plaintext: &[u8]) -> Sealed {
    let eph = EphemeralSecret::random_from_rng(OsRng);
    let epk = BoxPublic::from(&eph);
    let key = seal_key(&eph.diffie_hellman(&to.boxk), &epk, &to.boxk);
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let ct = ChaCha20Poly1305::new(&key)
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .expect("ChaCha20-Poly1305 only fails on plaintexts over 256 GiB");
    Sealed {
        epk: STANDARD.encode(epk.as_bytes()),
        nonce: STANDARD.encode(nonce),
        ct: STANDARD.encode(ct),
    }
}

/// Decrypt data sealed to `id`.
pub fn open(id: &KeyPair, sealed: &Sealed) -> Result<Vec<u8>, AuthError> {
    let epk = BoxPublic::from(decode_array::<32>(&STANDARD, &sealed.epk, "epk")?);
    let nonce = decode_array::<12>(&STANDARD, &sealed.nonce, "nonce")?;
    let ct = STANDARD
        .decode(&sealed.ct)
        .map_err(|_| malformed("ct is not valid base64"))?;
    let key = id.shared_key(&epk, false).ok_or(AuthError::Decrypt)?;
    ChaCha20Poly1305::new(&key)
        .decrypt(Nonce::from_slice(&nonce), ct.as_slice())
        .map_err(|_| AuthError::Decrypt)
}

impl KeyPair {
    /// Encrypt `plaintext` so that only `to` can read it (with [`open`]),
    /// like [`seal`] but from our own x25519 key instead of an ephemeral one:
    /// the key shared with `to` is computed once and remembered, so an agent
    /// pays one Diffie-Hellman per client instead of two scalar
    /// multiplications per result (most of its cost per result). The price:
    /// whoever steals our secret key can also read what we sealed before.
    pub fn seal_to(&self, to: &PublicKey, plaintext: &[u8]) -> Result<Sealed, AuthError> {
        let key = self
            .shared_key(&to.boxk, true)
            .ok_or_else(|| malformed("weak x25519 key"))?;
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let ct = ChaCha20Poly1305::new(&key)
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("ChaCha20-Poly1305 only fails on plaintexts over 256 GiB");
        Ok(Sealed {
            epk: STANDARD.encode(self.public.boxk.as_bytes()),
            nonce: STANDARD.encode(nonce),
            ct: STANDARD.encode(ct),
        })
    }

    /// The AEAD key shared with `peer`, for sealing to it or opening from it
    /// (the salt orders the keys sender first); `None` for a low-order peer key.
    fn shared_key(&self, peer: &BoxPublic, sealing: bool) -> Option<Key> {
        let slot = (*peer.as_bytes(), sealing);
        let mut cache = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = cache.get(&slot) {
            return Some(*k);
        }
        let shared = self.boxk.diffie_hellman(peer);
        if !shared.was_contributory() {
            return None;
        }
        let key = if sealing {
            seal_key(&shared, &self.public.boxk, peer)
        } else {
            seal_key(&shared, peer, &self.public.boxk)
        };
        if cache.len() >= SHARED_KEYS {
            cache.clear();
        }
        cache.insert(slot, key);
        Some(key)
    }
}

/// Where a key stands with the manager; also the name of its directory.
/// Ordered by the weight of the decision: when a key is found in two
/// directories, the later state wins. Pending is no decision (the manager
/// files every unknown key it sees there, possibly just as `mgmt keys`
/// accepts it from another process), so an accept outranks a stale pending
/// copy; a reject outranks both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyState {
    Pending,
    Accepted,
    Rejected,
}

impl KeyState {
    pub const ALL: [KeyState; 3] = [KeyState::Pending, KeyState::Accepted, KeyState::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Accepted => "accepted",
            KeyState::Rejected => "rejected",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`KeyStore::submit`] did with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub state: KeyState,
    /// The key was not known before (it is now pending).
    pub new: bool,
    /// Accepted keys with the same role and name but other bytes: a reinstalled
    /// node, or someone impersonating it. Tell the operator.
    pub name_clash: Vec<PublicKey>,
}

/// The manager's keys, salt-key style: `DIR/{pending,accepted,rejected}/FINGERPRINT`,
/// each file holding one public key line. Directories are created 0700. The
/// files are the truth; the in-memory map makes lookups O(1), and [`reload`](Self::reload)
/// picks up changes made by another process (the `key` management command).
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    keys: HashMap<String, (KeyState, PublicKey)>,
    max_pending: usize,
}

impl KeyStore {
    pub fn open(dir: &Path) -> anyhow::Result<KeyStore> {
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for sub in KeyState::ALL {
            let d = dir.join(sub.as_str());
            builder
                .create(&d)
                .with_context(|| format!("cannot create key directory {}", d.display()))?;
        }
        let mut store = KeyStore {
            dir: dir.to_owned(),
            keys: HashMap::new(),
            max_pending: MAX_PENDING,
        };
        store.reload()?;
        Ok(store)
    }

    /// Re-read every key file. A file that is not a key, or not named by its
    /// key's fingerprint, is an error naming it: better than silently trusting less or more.
    pub fn reload(&mut self) -> anyhow::Result<()> {
        let mut keys: HashMap<String, (KeyState, PublicKey)> = HashMap::new();
        for state in KeyState::ALL {
            let d = self.dir.join(state.as_str());
            let unreadable = || format!("cannot read key directory {}", d.display());
            for entry in fs::read_dir(&d).with_context(unreadable)? {
                let path = entry.with_context(unreadable)?.path();
                let file_name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if file_name.starts_with('.') {
                    continue; // our temp files
                }
                let p = path.display();
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("cannot read key file {p}"))?;
                let key: PublicKey = text
                    .trim()
                    .parse()
                    .with_context(|| format!("invalid key file {p}"))?;
                if key.fingerprint() != file_name {
                    bail!(
                        "key file {p} holds key {}: it must be named by its fingerprint",
                        key.fingerprint()
                    );
                }
                match keys.get(&key.key_id()) {
                    Some((old, _)) if *old >= state => {}
                    _ => {
                        keys.insert(key.key_id(), (state, key));
                    }
                }
            }
        }
        self.keys = keys;
        Ok(())
    }

    /// Record a key that asked to be admitted. New keys become pending (never
    /// accepted); known keys keep their state.
    pub fn submit(&mut self, key: &PublicKey) -> anyhow::Result<Submission> {
        let id = key.key_id();
        let name_clash = self
            .keys
            .values()
            .filter(|(s, k)| {
                *s == KeyState::Accepted && (k.role, &k.name) == (key.role, &key.name) && k != key
            })
            .map(|(_, k)| k.clone())
            .collect();
        if let Some((state, _)) = self.keys.get(&id) {
            return Ok(Submission {
                state: *state,
                new: false,
                name_clash,
            });
        }
        let pending = self
            .keys
            .values()
            .filter(|(s, _)| *s == KeyState::Pending)
            .count();
        if pending >= self.max_pending {
            bail!("too many pending keys ({pending}); accept, reject or delete some first");
        }
        self.add(KeyState::Pending, key)?;
        Ok(Submission {
            state: KeyState::Pending,
            new: true,
            name_clash,
        })
    }

    fn add(&mut self, state: KeyState, key: &PublicKey) -> anyhow::Result<()> {
        let fp = key.fingerprint();
        if let Some((_, other)) = self
            .keys
            .values()
            .find(|(_, k)| k.fingerprint() == fp && k != key)
        {
            bail!("key {key} has the same fingerprint as the known key {other}; refusing it");
        }
        let path = self.dir.join(state.as_str()).join(&fp);
        write_file(&path, format!("{key}\n").as_bytes(), 0o600, true)?;
        self.keys.insert(key.key_id(), (state, key.clone()));
        Ok(())
    }

    /// The one key that `selector` names: a fingerprint, a key id or a name.
    fn find(&self, selector: &str) -> anyhow::Result<(KeyState, PublicKey)> {
        let hits: Vec<&(KeyState, PublicKey)> = self
            .keys
            .iter()
            .filter(|(id, (_, k))| {
                *id == selector || k.fingerprint() == selector || k.name == selector
            })
            .map(|(_, v)| v)
            .collect();
        match hits[..] {
            [hit] => Ok(hit.clone()),
            [] => bail!("no key matches {selector:?} (give a fingerprint or a name)"),
            _ => {
                let list: Vec<String> = hits
                    .iter()
                    .map(|(s, k)| format!("{} ({s} {} {})", k.fingerprint(), k.role, k.name))
                    .collect();
                bail!(
                    "{selector:?} matches {} keys: {}; give a fingerprint",
                    hits.len(),
                    list.join(", ")
                )
            }
        }
    }

    fn set_state(&mut self, selector: &str, to: KeyState) -> anyhow::Result<PublicKey> {
        let (from, key) = self.find(selector)?;
        let fp = key.fingerprint();
        let target = self.dir.join(to.as_str()).join(&fp);
        if from != to {
            let source = self.dir.join(from.as_str()).join(&fp);
            match fs::rename(&source, &target) {
                Ok(()) => {}
                // The manager re-filed it meanwhile (it files keys it sees
                // announced as pending); we hold the key, so write it anew.
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    write_file(&target, format!("{key}\n").as_bytes(), 0o600, true)?
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot move {} to {}", source.display(), target.display())
                    })
                }
            }
        }
        self.remove_files(&fp, Some(to))?;
        self.keys.insert(key.key_id(), (to, key.clone()));
        Ok(key)
    }

    /// Remove the key's file from every state directory but `keep`.
    fn remove_files(&self, fingerprint: &str, keep: Option<KeyState>) -> anyhow::Result<()> {
        for state in KeyState::ALL.into_iter().filter(|s| Some(*s) != keep) {
            let path = self.dir.join(state.as_str()).join(fingerprint);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn accept(&mut self, selector: &str) -> anyhow::Result<PublicKey> {
        self.set_state(selector, KeyState::Accepted)
    }

    pub fn reject(&mut self, selector: &str) -> anyhow::Result<PublicKey> {
        self.set_state(selector, KeyState::Rejected)
    }

    /// Forget a key entirely: it may submit itself again and become pending.
    pub fn delete(&mut self, selector: &str) -> anyhow::Result<PublicKey> {
        let (_, key) = self.find(selector)?;
        self.remove_files(&key.fingerprint(), None)?;
        self.keys.remove(&key.key_id());
        Ok(key)
    }

    /// Every key, by state, then name, then fingerprint.
    pub fn list(&self) -> Vec<(KeyState, PublicKey)> {
        let mut all: Vec<_> = self.keys.values().cloned().collect();
        all.sort_by_key(|(s, k)| (*s, k.name.clone(), k.fingerprint()));
        all
    }

    pub fn state_of(&self, key_id: &str) -> Option<KeyState> {
        self.keys.get(key_id).map(|(s, _)| *s)
    }

    pub fn is_accepted(&self, key_id: &str) -> bool {
        self.state_of(key_id) == Some(KeyState::Accepted)
    }

    /// The accepted key with this id: the `trusted` argument of [`verify`].
    pub fn accepted(&self, key_id: &str) -> Option<PublicKey> {
        match self.keys.get(key_id) {
            Some((KeyState::Accepted, k)) => Some(k.clone()),
            _ => None,
        }
    }

    /// [`verify`] against the accepted keys, telling a pending or rejected
    /// key (NotAccepted) from an unknown one.
    pub fn verify(
        &self,
        signed: &Signed,
        purpose: Purpose,
    ) -> Result<(PublicKey, Value), AuthError> {
        if let Some((state, key)) = self.keys.get(&signed.key) {
            if *state != KeyState::Accepted {
                return Err(AuthError::NotAccepted(key.fingerprint()));
            }
        }
        verify(signed, purpose, |id| self.accepted(id))
    }

    /// Accept every key listed in an authorized-keys file (see [`parse_key_lines`]).
    /// The file is the operator's word: a listed key is accepted even if it was
    /// pending or rejected; to revoke one, remove it from the file and reject it.
    /// Nothing changes if any line is invalid. Returns the keys newly accepted.
    pub fn import_accepted(&mut self, path: &Path) -> anyhow::Result<Vec<PublicKey>> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let keys = parse_key_lines(&text)
            .with_context(|| format!("invalid authorized keys file {}", path.display()))?;
        let mut changed = Vec::new();
        for key in keys {
            match self.state_of(&key.key_id()) {
                Some(KeyState::Accepted) => continue,
                Some(_) => {
                    self.set_state(&key.key_id(), KeyState::Accepted)?;
                }
                None => self.add(KeyState::Accepted, &key)?,
            }
            changed.push(key);
        }
        Ok(changed)
    }
}

/// One `[[policy]]` table of the agent's config: which keys may run which
/// commands on which services. `keys` entries are a public key line, a
/// fingerprint (16 hex digits), a key name, or `"*"`; `commands` and `services`
/// are globs. A name is only as trustworthy as the review that accepted the
/// key: check fingerprints before accepting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub name: String,
    pub keys: Vec<String>,
    pub commands: Vec<String>,
    pub services: Vec<String>,
    /// Exceptions that win over this rule's allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<DenyRule>,
}

/// An exception inside a rule; a missing field means `["*"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    #[serde(default = "any")]
    pub commands: Vec<String>,
    #[serde(default = "any")]
    pub services: Vec<String>,
}

fn any() -> Vec<String> {
    vec!["*".to_owned()]
}

/// The `[[policy]]` tables on their own (a standalone file, or tests).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub policy: Vec<PolicyRule>,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { rule: String },
    Deny { reason: String },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

#[derive(Debug)]
enum KeyMatch {
    Any,
    Id(String),
    Fingerprint(String),
    Name(String),
}

#[derive(Debug)]
struct CompiledRule {
    name: String,
    keys: Vec<KeyMatch>,
    commands: GlobSet,
    services: GlobSet,
    deny: Vec<(GlobSet, GlobSet)>,
}

/// Compiled policy. Rules are tried in order; the first whose keys, commands
/// and services match, and none of whose `deny` entries match, allows. A rule's
/// deny entries only cancel that rule's allows; a later rule may still allow.
/// No matching rule, or no rules at all, denies.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<CompiledRule>,
}

fn globs(rule: &str, field: &str, patterns: &[String]) -> anyhow::Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p)
            .with_context(|| format!("policy rule {rule:?}: invalid pattern {p:?} in `{field}`"))?;
        set.add(glob);
    }
    set.build()
        .with_context(|| format!("policy rule {rule:?}: invalid `{field}`"))
}

fn key_match(rule: &str, entry: &str) -> anyhow::Result<KeyMatch> {
    let entry = entry.trim();
    if entry == "*" {
        Ok(KeyMatch::Any)
    } else if entry.contains(char::is_whitespace) {
        let key: PublicKey = entry
            .parse()
            .with_context(|| format!("policy rule {rule:?}: invalid key"))?;
        Ok(KeyMatch::Id(key.key_id()))
    } else if entry.len() == 16 && entry.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(KeyMatch::Fingerprint(entry.to_ascii_lowercase()))
    } else {
        check_name(entry).with_context(|| {
            format!("policy rule {rule:?}: `keys` entry is not a key, fingerprint, name or \"*\"")
        })?;
        Ok(KeyMatch::Name(entry.to_owned()))
    }
}

impl Policy {
    pub fn new(rules: &[PolicyRule]) -> anyhow::Result<Policy> {
        let compile = |r: &PolicyRule| -> anyhow::Result<CompiledRule> {
            Ok(CompiledRule {
                name: r.name.clone(),
                keys: r
                    .keys
                    .iter()
                    .map(|k| key_match(&r.name, k))
                    .collect::<anyhow::Result<_>>()?,
                commands: globs(&r.name, "commands", &r.commands)?,
                services: globs(&r.name, "services", &r.services)?,
                deny: r
                    .deny
                    .iter()
                    .map(|d| {
                        let commands = globs(&r.name, "deny.commands", &d.commands)?;
                        Ok((commands, globs(&r.name, "deny.services", &d.services)?))
                    })
                    .collect::<anyhow::Result<_>>()?,
            })
        };
        Ok(Policy {
            rules: rules.iter().map(compile).collect::<anyhow::Result<_>>()?,
        })
    }

    /// Parse TOML holding `[[policy]]` tables.
    pub fn parse(text: &str) -> anyhow::Result<Policy> {
        let config: PolicyConfig =
            toml::from_str(text).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
        Policy::new(&config.policy)
    }

    pub fn decide(&self, key: &PublicKey, cmd: &str, service: &str) -> Decision {
        let mut denied_by = None;
        for r in &self.rules {
            let key_ok = r.keys.iter().any(|m| match m {
                KeyMatch::Any => true,
                KeyMatch::Id(id) => *id == key.key_id(),
                KeyMatch::Fingerprint(fp) => *fp == key.fingerprint(),
                KeyMatch::Name(n) => *n == key.name,
            });
            if !(key_ok && r.commands.is_match(cmd) && r.services.is_match(service)) {
                continue;
            }
            if r.deny
                .iter()
                .any(|(c, s)| c.is_match(cmd) && s.is_match(service))
            {
                denied_by.get_or_insert(&r.name);
                continue;
            }
            return Decision::Allow {
                rule: r.name.clone(),
            };
        }
        Decision::Deny {
            reason: match denied_by {
                Some(rule) => format!("rule {rule:?} denies {cmd} on {service}"),
                None => "no rule allows it (default deny)".to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn client(name: &str) -> KeyPair {
        KeyPair::generate(Role::Client, name).unwrap()
    }

    #[test]
    fn low_order_keys_are_exactly_the_weak_ones() {
        let mut weak: Vec<[u8; 32]> = curve25519_dalek::constants::EIGHT_TORSION
            .iter()
            .map(|t| t.to_montgomery().to_bytes())
            .collect();
        let mut p = [0xff; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        for extra in [0xec, 0xed, 0xee] {
            // p - 1, and p, p + 1 (non-canonical 0 and 1)
            let mut v = p;
            v[0] = extra;
            weak.push(v);
        }
        let high: Vec<[u8; 32]> = weak
            .iter()
            .map(|w| {
                let mut v = *w;
                v[31] |= 0x80;
                v
            })
            .collect();
        for w in weak.iter().chain(&high) {
            assert!(is_low_order(w), "{w:02x?} not caught");
            // Each really makes the shared secret predictable.
            let dh = StaticSecret::random_from_rng(OsRng).diffie_hellman(&BoxPublic::from(*w));
            assert!(!dh.was_contributory(), "{w:02x?} is not weak");
        }
        for _ in 0..200 {
            let k = BoxPublic::from(&StaticSecret::random_from_rng(OsRng));
            assert!(!is_low_order(k.as_bytes()));
        }
        // A key line carrying a weak x25519 half is refused.
        let good = client("alice").public().bytes();
        let mut bad = good;
        bad[32..].copy_from_slice(&[0u8; 32]);
        assert!(PublicKey::from_parts(Role::Client, "alice", &bad).is_err());
        assert!(PublicKey::from_parts(Role::Client, "alice", &good).is_ok());
    }

    #[test]
    fn static_sealing_opens_only_for_the_recipient() {
        let agent = KeyPair::generate(Role::Agent, "web1").unwrap();
        let alice = client("alice");
        let bob = client("bob");
        for text in [&b"first"[..], b"second, from the cached key"] {
            let sealed = agent.seal_to(alice.public(), text).unwrap();
            assert_eq!(sealed.epk, STANDARD.encode(agent.public().boxk.as_bytes()));
            assert_eq!(open(&alice, &sealed).unwrap(), text);
            assert_eq!(open(&bob, &sealed), Err(AuthError::Decrypt));
        }
        // Fresh nonces: the same text never gives the same ciphertext.
        let a = agent.seal_to(alice.public(), b"x").unwrap();
        let b = agent.seal_to(alice.public(), b"x").unwrap();
        assert_ne!(a.ct, b.ct);
    }

    #[test]
    fn accepting_a_key_whose_pending_file_vanished_still_accepts_it() {
        let dir = tempfile::tempdir().unwrap();
        let agent = KeyPair::generate(Role::Agent, "web1").unwrap();
        let mut store = KeyStore::open(dir.path()).unwrap();
        store.submit(agent.public()).unwrap();
        // Another process (the manager re-filing it) raced us.
        fs::remove_file(
            dir.path()
                .join("pending")
                .join(agent.public().fingerprint()),
        )
        .unwrap();
        store.accept(&agent.public().fingerprint()).unwrap();
        let again = KeyStore::open(dir.path()).unwrap();
        assert!(again.is_accepted(&agent.public().key_id()));
    }

    #[test]
    fn public_key_line_round_trips() {
        let id = KeyPair::generate(Role::Agent, "web-01.example.com").unwrap();
        let line = id.public().to_string();
        assert!(
            line.starts_with("smgr1 agent web-01.example.com "),
            "{line}"
        );
        assert_eq!(id.key_id().len(), 86);
        let back: PublicKey = format!("  {line}  ").parse().unwrap();
        assert_eq!(&back, id.public());
        assert_eq!(back.fingerprint().len(), 16);
        assert!(back.fingerprint().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(back.fingerprint(), client("x").public().fingerprint());
    }

    #[test]
    fn bad_public_key_lines_are_refused() {
        let good = client("alice").public().to_string();
        let id = good.split(' ').nth(3).unwrap();
        let low_order_box = URL_SAFE_NO_PAD
            .encode([&URL_SAFE_NO_PAD.decode(id).unwrap()[..32], &[0u8; 32]].concat());
        for bad in [
            String::new(),
            good.replace("smgr1", "smgr2"),
            good.replace("client", "root"),
            good.replace("alice", "-alice"),
            format!("{good} extra"),
            format!("smgr1 client alice {}", &id[..80]),
            format!("smgr1 client alice {id}="),
            format!("smgr1 client alice {low_order_box}"),
        ] {
            assert!(
                matches!(bad.parse::<PublicKey>(), Err(AuthError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(KeyPair::generate(Role::Client, "a b").is_err());
        assert!(KeyPair::generate(Role::Client, "*").is_err());
    }

    #[test]
    fn secret_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        let id = KeyPair::generate(Role::Agent, "web1").unwrap();
        id.save(&path, false).unwrap();
        assert_eq!(mode(&path), 0o600);
        let back = KeyPair::load(&path).unwrap();
        assert_eq!(back.public(), id.public());
        assert_eq!(back.role(), Role::Agent);
        assert!(!format!("{back:?}").contains(&STANDARD.encode(id.sign.to_bytes())));
        let err = id.save(&path, false).unwrap_err().to_string();
        assert!(
            err.contains("agent.key") && err.contains("already exists"),
            "{err}"
        );
        let other = KeyPair::generate(Role::Agent, "web1").unwrap();
        other.save(&path, true).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(KeyPair::load(&path).unwrap().public(), other.public());
        // No temp files left behind by the atomic replace.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn loading_refuses_a_key_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        client("c").save(&path, false).unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", KeyPair::load(&path).unwrap_err());
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        fs::write(
            &path,
            "role = \"client\"\nname = \"c\"\nsign_secret = \"x\"\n",
        )
        .unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        let err = format!("{:#}", KeyPair::load(&path).unwrap_err());
        assert!(err.contains("invalid secret key file"), "{err}");
    }

    #[test]
    fn keygen_writes_secret_and_pub_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.key");
        let pk = keygen(&path, Role::Client, "alice", false).unwrap();
        let pub_path = dir.path().join("client.key.pub");
        assert_eq!(fs::read_to_string(&pub_path).unwrap(), format!("{pk}\n"));
        assert_eq!((mode(&path), mode(&pub_path)), (0o600, 0o644));
        assert_eq!(KeyPair::load(&path).unwrap().public(), &pk);
        let err = keygen(&path, Role::Client, "alice", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("client.key already exists"), "{err}");
        assert_eq!(fs::read_to_string(&pub_path).unwrap(), format!("{pk}\n"));
        let pk2 = keygen(&path, Role::Client, "alice", true).unwrap();
        assert_ne!(pk, pk2);
        assert_eq!(fs::read_to_string(&pub_path).unwrap(), format!("{pk2}\n"));
    }

    fn trust(keys: &[&PublicKey]) -> impl Fn(&str) -> Option<PublicKey> {
        let map: HashMap<String, PublicKey> =
            keys.iter().map(|k| (k.key_id(), (*k).clone())).collect();
        move |id| map.get(id).cloned()
    }

    #[test]
    fn signed_bodies_verify_and_round_trip() {
        let alice = client("alice");
        let body = json!({"cmd": "status", "service": "sshd", "id": "r1", "ts": 5});
        let signed = sign_body(&alice, Purpose::Request, &body);
        let wire: Signed = serde_json::from_str(&serde_json::to_string(&signed).unwrap()).unwrap();
        let (who, back) = verify(&wire, Purpose::Request, trust(&[alice.public()])).unwrap();
        assert_eq!((&who, back), (alice.public(), body));
        // Field order is kept, so the client's text is exactly what was signed.
        assert!(signed.body.starts_with(r#"{"cmd":"status""#));
    }

    #[test]
    fn tampering_and_wrong_keys_are_caught() {
        let alice = client("alice");
        let mallory = client("mallory");
        let trusted = trust(&[alice.public(), mallory.public()]);
        let signed = sign_body(&alice, Purpose::Request, &json!({"cmd": "status"}));

        let mut t = signed.clone();
        t.body = t.body.replace("status", "stop");
        assert_eq!(
            verify(&t, Purpose::Request, &trusted),
            Err(AuthError::BadSignature)
        );
        // Mallory's signature presented under Alice's key.
        let mut t = sign_body(&mallory, Purpose::Request, &json!({"cmd": "status"}));
        t.key = alice.key_id();
        assert_eq!(
            verify(&t, Purpose::Request, &trusted),
            Err(AuthError::BadSignature)
        );
        // A request signature does not pass as another purpose.
        assert_eq!(
            verify(&signed, Purpose::Announce, &trusted),
            Err(AuthError::BadSignature)
        );
        let err = verify(&signed, Purpose::Request, trust(&[mallory.public()])).unwrap_err();
        assert_eq!(err, AuthError::UnknownKey(alice.public().fingerprint()));
        // A lookup returning another key for the id is not trust.
        let wrong = verify(&signed, Purpose::Request, |_| {
            Some(mallory.public().clone())
        });
        assert!(matches!(wrong, Err(AuthError::UnknownKey(_))));
        let mut t = signed.clone();
        t.sig = "bm90IGEgc2ln".into();
        assert!(matches!(
            verify(&t, Purpose::Request, &trusted),
            Err(AuthError::Malformed(_))
        ));
        let mut t = signed;
        t.key = "!".into();
        assert!(matches!(
            verify(&t, Purpose::Request, &trusted),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn only_clients_sign_requests_and_only_agents_results() {
        let agent = KeyPair::generate(Role::Agent, "web1").unwrap();
        let alice = client("alice");
        let trusted = trust(&[agent.public(), alice.public()]);
        let req = sign_body(&agent, Purpose::Request, &json!({}));
        let err = verify(&req, Purpose::Request, &trusted).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::WrongRole {
                    role: Role::Agent,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("a request must be signed by a client key"),
            "{err}"
        );
        let res = sign_body(&alice, Purpose::Result, &json!({}));
        assert!(matches!(
            verify(&res, Purpose::Result, &trusted),
            Err(AuthError::WrongRole { .. })
        ));
        let res = sign_body(&agent, Purpose::Result, &json!({"ok": 1}));
        assert!(verify(&res, Purpose::Result, &trusted).is_ok());
    }

    #[test]
    fn announcements_prove_possession() {
        let agent = KeyPair::generate(Role::Agent, "web1").unwrap();
        let body = json!({"key": agent.public().to_string()});
        let (pk, _) = verify_announce(&sign_body(&agent, Purpose::Announce, &body)).unwrap();
        assert_eq!(&pk, agent.public());
        // Announcing someone else's key fails without their secret.
        let mallory = KeyPair::generate(Role::Agent, "web1").unwrap();
        let mut forged = sign_body(&mallory, Purpose::Announce, &body);
        assert!(matches!(
            verify_announce(&forged),
            Err(AuthError::Malformed(_))
        ));
        forged.key = agent.key_id();
        assert_eq!(verify_announce(&forged), Err(AuthError::BadSignature));
        let no_key = sign_body(&agent, Purpose::Announce, &json!({}));
        assert!(matches!(
            verify_announce(&no_key),
            Err(AuthError::Malformed(_))
        ));
    }

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

    #[test]
    fn sealed_data_opens_only_for_its_recipient() {
        let alice = client("alice");
        let bob = client("bob");
        let sealed = seal(alice.public(), b"sshd is running");
        let wire: Sealed = serde_json::from_str(&serde_json::to_string(&sealed).unwrap()).unwrap();
        assert_eq!(open(&alice, &wire).unwrap(), b"sshd is running");
        assert_eq!(open(&bob, &sealed), Err(AuthError::Decrypt));
        let again = seal(alice.public(), b"sshd is running");
        assert_ne!((&again.epk, &again.ct), (&sealed.epk, &sealed.ct));
        assert_eq!(open(&alice, &seal(alice.public(), b"")).unwrap(), b"");

        let flip = |s: &str| {
            let mut b = STANDARD.decode(s).unwrap();
            b[0] ^= 1;
            STANDARD.encode(b)
        };
        for t in [
            Sealed {
                ct: flip(&sealed.ct),
                ..sealed.clone()
            },
            Sealed {
                nonce: flip(&sealed.nonce),
                ..sealed.clone()
            },
            Sealed {
                epk: flip(&sealed.epk),
                ..sealed.clone()
            },
        ] {
            assert_eq!(open(&alice, &t), Err(AuthError::Decrypt));
        }
        // A low-order epk makes the shared secret public: refused even when the
        // sender (anyone) encrypted under that known key.
        let zero = BoxPublic::from([0u8; 32]);
        let known = StaticSecret::random_from_rng(OsRng).diffie_hellman(&zero);
        let key = seal_key(&known, &zero, &alice.public().boxk);
        let ct = ChaCha20Poly1305::new(&key)
            .encrypt(Nonce::from_slice(&[0; 12]), &b"x"[..])
            .unwrap();
        let weak = Sealed {
            epk: STANDARD.encode([0u8; 32]),
            nonce: STANDARD.encode([0u8; 12]),
            ct: STANDARD.encode(ct),
        };
        assert_eq!(open(&alice, &weak), Err(AuthError::Decrypt));
        let bad = Sealed {
            nonce: "AAAA".into(),
            ..sealed.clone()
        };
        assert!(matches!(open(&alice, &bad), Err(AuthError::Malformed(_))));
        let bad = Sealed {
            ct: "*".into(),
            ..sealed
        };
        assert!(matches!(open(&alice, &bad), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn key_store_salt_style_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("keys");
        let mut store = KeyStore::open(&root).unwrap();
        for s in KeyState::ALL {
            assert_eq!(mode(&root.join(s.as_str())), 0o700);
        }
        let web1 = KeyPair::generate(Role::Agent, "web1").unwrap();
        let pk = web1.public();
        let sub = store.submit(pk).unwrap();
        assert_eq!(
            sub,
            Submission {
                state: KeyState::Pending,
                new: true,
                name_clash: vec![]
            }
        );
        assert!(root.join("pending").join(pk.fingerprint()).exists());
        assert!(!store.is_accepted(&pk.key_id()));
        assert!(!store.submit(pk).unwrap().new);

        assert_eq!(&store.accept("web1").unwrap(), pk);
        assert!(store.is_accepted(&pk.key_id()));
        assert!(!root.join("pending").join(pk.fingerprint()).exists());
        assert_eq!(store.submit(pk).unwrap().state, KeyState::Accepted);

        // A reinstalled (or impersonated) web1: pending, and the clash is reported.
        let impostor = KeyPair::generate(Role::Agent, "web1").unwrap();
        let sub = store.submit(impostor.public()).unwrap();
        assert_eq!(
            (sub.state, sub.name_clash),
            (KeyState::Pending, vec![pk.clone()])
        );
        let err = store.accept("web1").unwrap_err().to_string();
        assert!(err.contains("matches 2 keys"), "{err}");
        store.reject(&impostor.public().fingerprint()).unwrap();

        // State survives a restart.
        let mut store = KeyStore::open(&root).unwrap();
        assert!(store.is_accepted(&pk.key_id()));
        assert_eq!(store.state_of(&impostor.key_id()), Some(KeyState::Rejected));
        let states: Vec<KeyState> = store.list().into_iter().map(|(s, _)| s).collect();
        assert_eq!(states, [KeyState::Accepted, KeyState::Rejected]);

        store.delete(&pk.fingerprint()).unwrap();
        assert_eq!(store.state_of(&pk.key_id()), None);
        assert!(store.accept("web1").is_ok()); // only the rejected one is left
        assert!(store
            .delete("nosuch")
            .unwrap_err()
            .to_string()
            .contains("no key matches"));
        store.reload().unwrap();
        assert!(store.is_accepted(&impostor.key_id()));
    }

    #[test]
    fn key_store_verifies_and_tells_pending_from_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path()).unwrap();
        let alice = client("alice");
        let signed = sign_body(&alice, Purpose::Request, &json!({"cmd": "status"}));
        assert!(matches!(
            store.verify(&signed, Purpose::Request),
            Err(AuthError::UnknownKey(_))
        ));
        store.submit(alice.public()).unwrap();
        let err = store.verify(&signed, Purpose::Request).unwrap_err();
        assert_eq!(err, AuthError::NotAccepted(alice.public().fingerprint()));
        store.accept("alice").unwrap();
        assert!(store.verify(&signed, Purpose::Request).is_ok());
        assert_eq!(
            store.accepted(&alice.key_id()).as_ref(),
            Some(alice.public())
        );
    }

    #[test]
    fn key_store_limits_pending_and_checks_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path()).unwrap();
        store.max_pending = 2;
        store.submit(client("a").public()).unwrap();
        store.submit(client("b").public()).unwrap();
        let err = store.submit(client("c").public()).unwrap_err().to_string();
        assert!(err.contains("too many pending keys"), "{err}");
        fs::write(
            dir.path().join("accepted").join("0123456789abcdef"),
            "junk\n",
        )
        .unwrap();
        let err = format!("{:#}", store.reload().unwrap_err());
        assert!(err.contains("0123456789abcdef"), "{err}");
    }

    #[test]
    fn import_accepted_reads_authorized_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(&dir.path().join("keys")).unwrap();
        let (a, b) = (client("ops"), client("mon"));
        store.submit(b.public()).unwrap();
        store.reject("mon").unwrap();
        let file = dir.path().join("authorized_keys");
        fs::write(
            &file,
            format!("# operators\n\n{}\n  {}\n", a.public(), b.public()),
        )
        .unwrap();
        let changed = store.import_accepted(&file).unwrap();
        assert_eq!(changed, [a.public().clone(), b.public().clone()]);
        assert!(store.is_accepted(&a.key_id()) && store.is_accepted(&b.key_id()));
        assert!(store.import_accepted(&file).unwrap().is_empty());

        fs::write(
            &file,
            format!("{}\nsmgr1 client broken\n", client("new").public()),
        )
        .unwrap();
        let err = format!("{:#}", store.import_accepted(&file).unwrap_err());
        assert!(
            err.contains("authorized_keys") && err.contains("line 2"),
            "{err}"
        );
        assert_eq!(store.list().len(), 2);
    }

    const EXAMPLE: &str = r#"
        [[policy]]
        name = "monitoring"
        keys = ["MON_LINE"]
        commands = ["status"]
        services = ["*"]

        [[policy]]
        name = "ops"
        keys = ["ops"]
        commands = ["*"]
        services = ["*"]
        deny = [{ commands = ["stop"], services = ["sshd"] }]
    "#;

    #[test]
    fn policy_examples() {
        let (mon, ops, eve) = (client("mon"), client("ops"), client("eve"));
        let policy =
            Policy::parse(&EXAMPLE.replace("MON_LINE", &mon.public().to_string())).unwrap();
        let decide = |id: &KeyPair, cmd, svc| policy.decide(id.public(), cmd, svc);
        assert_eq!(
            decide(&mon, "status", "nginx"),
            Decision::Allow {
                rule: "monitoring".into()
            }
        );
        assert!(!decide(&mon, "restart", "nginx").is_allowed());
        assert_eq!(
            decide(&ops, "restart", "nginx"),
            Decision::Allow { rule: "ops".into() }
        );
        assert!(decide(&ops, "stop", "nginx").is_allowed());
        assert!(decide(&ops, "status", "sshd").is_allowed());
        assert_eq!(
            decide(&ops, "stop", "sshd"),
            Decision::Deny {
                reason: "rule \"ops\" denies stop on sshd".into()
            }
        );
        assert_eq!(
            decide(&eve, "status", "sshd"),
            Decision::Deny {
                reason: "no rule allows it (default deny)".into()
            }
        );
        assert!(!Policy::new(&[])
            .unwrap()
            .decide(ops.public(), "status", "sshd")
            .is_allowed());
    }

    #[test]
    fn policy_key_forms_and_rule_order() {
        let (alice, bob) = (client("alice"), client("bob"));
        let text = format!(
            "[[policy]]\nname = \"restricted\"\nkeys = [\"{}\"]\ncommands = [\"*\"]\nservices = [\"web-*\"]\n\
             deny = [{{ commands = [\"stop\"] }}]\n\
             [[policy]]\nname = \"all\"\nkeys = [\"*\"]\ncommands = [\"status\", \"stop\"]\nservices = [\"*\"]\n",
            alice.public().fingerprint()
        );
        let policy = Policy::parse(&text).unwrap();
        assert_eq!(
            policy.decide(alice.public(), "restart", "web-1"),
            Decision::Allow {
                rule: "restricted".into()
            }
        );
        assert!(!policy.decide(alice.public(), "restart", "db").is_allowed());
        assert_eq!(
            policy.decide(alice.public(), "status", "web-1"),
            Decision::Allow {
                rule: "restricted".into()
            }
        );
        // A rule's deny only cancels that rule: a later rule may still allow.
        assert_eq!(
            policy.decide(alice.public(), "stop", "web-1"),
            Decision::Allow { rule: "all".into() }
        );
        assert_eq!(
            policy.decide(bob.public(), "stop", "db"),
            Decision::Allow { rule: "all".into() }
        );
        let denied = policy.decide(bob.public(), "restart", "web-1");
        assert_eq!(
            denied,
            Decision::Deny {
                reason: "no rule allows it (default deny)".into()
            }
        );
    }

    #[test]
    fn invalid_policies_are_refused() {
        let base =
            "[[policy]]\nname = \"r\"\nkeys = [\"*\"]\ncommands = [\"*\"]\nservices = [\"*\"]\n";
        assert!(Policy::parse(base).is_ok());
        let err = Policy::parse(&format!("{base}bogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err =
            Policy::parse(&base.replace("services = [\"*\"]", "services = [\"[\"]")).unwrap_err();
        assert!(format!("{err:#}").contains("services"), "{err:#}");
        let err =
            Policy::parse(&base.replace("keys = [\"*\"]", "keys = [\"smgr1 client x AAAA\"]"))
                .unwrap_err();
        assert!(format!("{err:#}").contains("invalid key"), "{err:#}");
        assert!(Policy::parse(&base.replace("commands = [\"*\"]\n", "")).is_err());
        // The rules also load as part of a larger config (and re-serialize).
        let config: PolicyConfig = toml::from_str(base).unwrap();
        assert_eq!(
            toml::from_str::<PolicyConfig>(&toml::to_string(&config).unwrap()).unwrap(),
            config
        );
    }
}
