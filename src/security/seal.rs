//! Sealing: data only the holder of one x25519 key can read, sealed from an
//! ephemeral key ([`seal`]) or from a key pair's own key with its cache of
//! AEAD keys shared with each peer ([`KeyPair::seal_to`]).

use super::{decode_array, malformed, AuthError, KeyPair, PublicKey};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{EphemeralSecret, PublicKey as BoxPublic, SharedSecret};

/// HKDF `info` for sealed results.
const SEAL_INFO: &[u8] = b"service-mgr/v2 result";
/// Peers whose shared AEAD key a key pair remembers (then it starts over).
const SHARED_KEYS: usize = 4096;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::testing::client;
    use crate::security::Role;
    use x25519_dalek::StaticSecret;
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
}
