//! Keys, signatures, sealed results and the key store: what lets an agent trust
//! a request whoever relayed it.
//!
//! Anyone can reach every port and the manager is only a relay, so protection
//! is end to end. A client signs each request (ed25519); every agent checks the
//! signature itself, then freshness ([`ReplayGuard`]) and its own policy
//! ([`crate::config::policy`]), before running anything. Agents sign results and
//! [`seal`](fn@seal) them to the requesting client's x25519 key. The manager admits keys
//! salt-style ([`KeyStore`]: pending/accepted/rejected) and drops requests from keys it
//! has not accepted: that spares the agents work, it is not what protects them.
//!
//! The parts:
//! - [`keys`]: [`PublicKey`] and its one-line text form, the [`KeyPair`], [`Role`],
//!   key names, fingerprints, the low-order check.
//! - [`keyfile`]: secret key files (mode 0600, atomic replace) and [`keygen`].
//! - [`envelope`]: [`Purpose`], the [`Signed`] envelope, [`sign`], [`verify_signature`]
//!   (the body is decoded by the caller, once, into its protocol type), and the
//!   `Value` forms [`sign_body`], [`verify`], [`verify_announce`].
//! - [`seal`](mod@seal): [`Sealed`] data, [`seal()`], [`open`], and a key pair's cache
//!   of AEAD keys shared with its peers ([`KeyPair::seal_to`]).
//! - [`replay`]: the [`ReplayGuard`] against stale and repeated requests, and its
//!   journal on disk, which keeps them refused across restarts.
//! - [`keystore`]: the manager's [`KeyStore`] and the [`KeyState`] of each key.
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

pub mod envelope;
pub mod keyfile;
pub mod keys;
pub mod keystore;
pub mod replay;
pub mod seal;

pub use envelope::{
    sign, sign_body, verify, verify_announce, verify_announced, verify_signature, Purpose, Signed,
};
pub use keyfile::{keygen, KeyFileError};
pub use keys::{
    box_key_base64_of_line, check_name, fingerprint_of_id, parse_key_lines, KeyPair, PublicKey,
    Role, KEY_PREFIX,
};
pub use keystore::{
    KeyState, KeyStore, KeyStoreError, Submission, TurnedAway, TurnedAwayReason, MAX_PENDING,
    MAX_PENDING_PER_SOURCE, PENDING_TTL, SOURCE_BURST, SOURCE_REFILL,
};
pub use replay::{JournalError, JournalLoad, ReplayGuard, MAX_REQUEST_ID};
pub use seal::{open, seal, Sealed};

use base64::Engine;

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
    #[error(
        "cannot record the request in the replay journal {file} ({error}); refused, since it \
         could run again after a restart: free space there or fix its permissions"
    )]
    NotRecorded { file: String, error: String },
    #[error("malformed security data: {0}")]
    Malformed(String),
    #[error("cannot decrypt: not addressed to this key, or altered on the way")]
    Decrypt,
}

impl AuthError {
    /// One short word for counting refusals (metrics, logs).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::NotAccepted(_) => "not_accepted",
            AuthError::WrongRole { .. } => "wrong_role",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired { .. } | AuthError::FromTheFuture { .. } => "expired",
            AuthError::Replayed(_) => "replay",
            AuthError::ReplayCacheFull(_) => "busy",
            AuthError::NotRecorded { .. } => "journal",
            AuthError::Malformed(_) | AuthError::Decrypt => "malformed",
        }
    }
}

fn malformed(msg: impl Into<String>) -> AuthError {
    AuthError::Malformed(msg.into())
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

/// Helpers shared by the unit tests of the parts (and of the policy).
#[cfg(test)]
pub(crate) mod testing {
    use super::{KeyPair, Role};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    pub fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    pub fn client(name: &str) -> KeyPair {
        KeyPair::generate(Role::Client, name).unwrap()
    }

    /// An error with its causes, as `main` prints it (`{:#}` of anyhow).
    pub fn chain(err: &dyn std::error::Error) -> String {
        let mut text = err.to_string();
        let mut cause = err.source();
        while let Some(e) = cause {
            text.push_str(&format!(": {e}"));
            cause = e.source();
        }
        text
    }
}
