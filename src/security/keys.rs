//! Keys: a peer's [`KeyPair`], the [`PublicKey`] others hold of it and its
//! one-line text form, the [`Role`] a key plays, key names and fingerprints.

use super::{decode_array, malformed, AuthError};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::Key;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use x25519_dalek::{PublicKey as BoxPublic, StaticSecret};

/// First word of a public key line; bumped if the key format ever changes.
pub const KEY_PREFIX: &str = "smgr1";

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
    pub(super) role: Role,
    pub(super) name: String,
    pub(super) sign: VerifyingKey,
    pub(super) boxk: BoxPublic,
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

    /// The x25519 half, which is also this key's CurveZMQ public key.
    pub fn curve_key(&self) -> [u8; 32] {
        *self.boxk.as_bytes()
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
        hex::encode(&Sha256::digest(self.bytes())[..8])
    }
}

/// The fingerprint (the key store's file name) of a key id; `None` if the id
/// is not one.
pub fn fingerprint_of_id(key_id: &str) -> Option<String> {
    let bytes: [u8; 64] = URL_SAFE_NO_PAD.decode(key_id).ok()?.try_into().ok()?;
    Some(fingerprint_of(&bytes))
}

/// The fingerprint of a key id, for errors about keys we do not hold.
pub(super) fn fingerprint_of(key_bytes: &[u8; 64]) -> String {
    hex::encode(&Sha256::digest(key_bytes)[..8])
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

/// The fields of a public key line `smgr1 ROLE NAME KEY_ID` (blanks around
/// and between fields are ignored): role, name and the key id's 64 bytes,
/// checked to be in canonical form but not yet as curve points.
fn line_fields(line: &str) -> Result<(&str, &str, [u8; 64]), AuthError> {
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
    Ok((role, name, bytes))
}

/// The x25519 half of the public key line `line`, as
/// [`PublicKey::box_key_base64`] names it, without decoding the ed25519
/// half: opening a sealed result needs only this, and a broadcast's client
/// meets a new agent key in every result (the curve point decompression of a
/// full parse was a fifth of its time). The line is the manager's, which
/// parsed it in full when the key was accepted.
pub fn box_key_base64_of_line(line: &str) -> Option<String> {
    let (_, _, bytes) = line_fields(line).ok()?;
    Some(STANDARD.encode(&bytes[32..]))
}

impl FromStr for PublicKey {
    type Err = AuthError;
    /// Parse `smgr1 ROLE NAME KEY_ID` (blanks around and between fields are ignored).
    fn from_str(line: &str) -> Result<PublicKey, AuthError> {
        let (role, name, bytes) = line_fields(line)?;
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
    pub(super) sign: SigningKey,
    pub(super) boxk: StaticSecret,
    pub(super) public: PublicKey,
    /// AEAD keys shared with peers' x25519 keys, see [`KeyPair::seal_to`].
    pub(super) shared: std::sync::Mutex<HashMap<([u8; 32], bool), Key>>,
}

impl KeyPair {
    /// A new random key pair (OS randomness).
    pub fn generate(role: Role, name: &str) -> Result<KeyPair, AuthError> {
        check_name(name)?;
        Ok(KeyPair::from_secrets(
            role,
            name,
            SigningKey::generate(&mut OsRng),
            StaticSecret::random_from_rng(OsRng),
        ))
    }

    pub(super) fn from_secrets(
        role: Role,
        name: &str,
        sign: SigningKey,
        boxk: StaticSecret,
    ) -> KeyPair {
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
    /// The x25519 secret as CurveZMQ takes it: one key for sealing and for the wire.
    pub fn curve_secret(&self) -> [u8; 32] {
        self.boxk.to_bytes()
    }
}

impl fmt::Debug for KeyPair {
    /// Never prints the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({})", self.public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::testing::client;

    #[test]
    fn the_box_key_of_a_line_is_the_parsed_keys() {
        let k = KeyPair::generate(Role::Agent, "web1").unwrap();
        let line = k.public().to_string();
        assert_eq!(
            box_key_base64_of_line(&line).as_deref(),
            Some(k.public().box_key_base64().as_str())
        );
        assert_eq!(box_key_base64_of_line("smgr1 agent web1"), None);
        assert_eq!(
            box_key_base64_of_line(&line.replacen("smgr1", "ssh-ed25519", 1)),
            None
        );
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
}
