//! Signed envelopes: a JSON body, the signer's key id and an ed25519 signature
//! under a [`Purpose`], so that a signed request never passes for a result or
//! an announcement.

use super::keys::fingerprint_of;
use super::{decode_array, malformed, AuthError, KeyPair, PublicKey, Role};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::{Signature, Signer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

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

/// Sign a JSON value for `purpose` (see [`sign`]).
pub fn sign_body(id: &KeyPair, purpose: Purpose, body: &Value) -> Signed {
    sign(id, purpose, body)
}

/// Sign a message for `purpose`: its compact JSON encoding is the body, sent
/// as the exact text signed. A protocol type signs the same bytes as its
/// `serde_json::Value`, so typed and untyped signers agree.
pub fn sign<T: Serialize + ?Sized>(id: &KeyPair, purpose: Purpose, body: &T) -> Signed {
    let text = serde_json::to_string(body).expect("protocol types always serialize");
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
    let key = verify_signature(signed, purpose, trusted)?;
    let body = serde_json::from_str(&signed.body)
        .map_err(|e| malformed(format!("signed body is not JSON: {e}")))?;
    Ok((key, body))
}

/// [`verify`] without reading the body: the caller decodes `signed.body`
/// once, into the type it expects (the protocol's signed bodies).
pub fn verify_signature(
    signed: &Signed,
    purpose: Purpose,
    trusted: impl Fn(&str) -> Option<PublicKey>,
) -> Result<PublicKey, AuthError> {
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
    Ok(key)
}

/// Check an announcement: a body `{"key": "<public key line>", ...}` signed
/// by that very key, which proves the sender holds its secret. The key is not
/// trusted by this; hand it to [`KeyStore::submit`](super::KeyStore::submit).
pub fn verify_announce(signed: &Signed) -> Result<(PublicKey, Value), AuthError> {
    let body: Value = serde_json::from_str(&signed.body)
        .map_err(|e| malformed(format!("signed body is not JSON: {e}")))?;
    let key = verify_announced(signed, body.get("key").and_then(Value::as_str))?;
    Ok((key, body))
}

/// [`verify_announce`] for a body the caller has decoded (once) and whose
/// `key` field holds `line`.
pub fn verify_announced(signed: &Signed, line: Option<&str>) -> Result<PublicKey, AuthError> {
    let line = line
        .ok_or_else(|| malformed("an announcement needs a `key` field with the public key line"))?;
    let key: PublicKey = line.parse()?;
    if key.key_id() != signed.key {
        return Err(malformed(
            "the announcement is signed by another key than the one it announces",
        ));
    }
    verify_signature(signed, Purpose::Announce, |_| Some(key.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::testing::client;
    use serde_json::json;
    use std::collections::HashMap;
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
}
