//! The manager's public key, as clients, agents and `mgmt` pin it: CurveZMQ
//! needs the server's key before the first byte, so a peer that does not hold
//! the manager's secret key cannot complete a handshake (a fake manager gets
//! neither our requests nor a chance to answer them).

use super::{default_config_dir, default_state_dir};
use crate::security::{KeyPair, PublicKey, Role};
use crate::transport::{self, Wire};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};

/// The value of `manager_key` / `--manager-key` that talks to a 0.1 manager
/// (or one with `allow_unsigned = true`) without CURVE.
pub const PLAINTEXT: &str = "plaintext";

/// The file the manager writes its public key to, beside its key pair.
pub const MANAGER_PUB: &str = "manager.key.pub";

/// How we know the manager.
#[derive(Debug, Clone)]
pub enum ManagerKey {
    /// `plaintext`: ZMTP NULL, for 0.1 managers and `allow_unsigned` ones.
    Plaintext,
    /// The manager's key and where we found it (for error messages).
    Pinned { key: Box<PublicKey>, from: String },
}

impl ManagerKey {
    /// The wire to this manager, proving `ours`; without a key of our own (an
    /// unsigned client) a throwaway one, so the manager still knows the
    /// connection is encrypted and can refuse the request with a reason.
    pub fn wire(&self, ours: Option<&KeyPair>) -> Result<Wire> {
        match self {
            ManagerKey::Plaintext => Ok(Wire::Plain),
            ManagerKey::Pinned { key, .. } => Ok(match ours {
                Some(k) => Wire::curve(k, key),
                None => Wire::curve(&KeyPair::generate(Role::Client, "anonymous")?, key),
            }),
        }
    }

    /// One line for errors: which key we expect and where it came from.
    pub fn describe(&self) -> String {
        match self {
            ManagerKey::Plaintext => "no manager key (plaintext)".into(),
            ManagerKey::Pinned { key, from } => {
                format!(
                    "manager key {} ({}) from {from}",
                    key.fingerprint(),
                    key.name()
                )
            }
        }
    }
}

/// Read one manager key line: the setting's value itself, or a file holding it.
fn parse(value: &str, from: &str) -> Result<PublicKey> {
    let key: PublicKey = value
        .trim()
        .parse()
        .with_context(|| format!("{from} is not a manager key line (smgr1 manager NAME KEY)"))?;
    if key.role() != Role::Manager {
        bail!(
            "{from} holds a {} key, not the manager's (the manager writes {MANAGER_PUB} into its state_dir)",
            key.role()
        );
    }
    Ok(key)
}

fn read(path: &Path) -> Result<PublicKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the manager key {}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    parse(line, &path.display().to_string())
}

/// Where a manager on this host keeps its public key (its default state dir,
/// and root's), for a client or agent on the same host.
fn local_candidates() -> Vec<PathBuf> {
    vec![
        default_state_dir().join(MANAGER_PUB),
        PathBuf::from("/var/lib/service-mgr").join(MANAGER_PUB),
    ]
}

fn is_local(endpoint: &str) -> bool {
    transport::endpoint_host(endpoint)
        .is_some_and(|h| matches!(h, "localhost" | "[::1]" | "::1") || h.starts_with("127."))
}

/// Resolve `manager_key` for a connection to `endpoint`: `plaintext`, a key
/// line, or a file; unset, `$SERVICE_MGR_MANAGER_KEY`, else `manager.key.pub` in our config directory, else
/// (for a manager on this host) the one the manager wrote into its state dir.
pub fn manager_key(setting: Option<&str>, endpoint: &str) -> Result<ManagerKey> {
    match setting.map(str::trim) {
        Some(PLAINTEXT) => return Ok(ManagerKey::Plaintext),
        Some(line) if line.starts_with(crate::security::KEY_PREFIX) => {
            return Ok(ManagerKey::Pinned {
                key: Box::new(parse(line, "manager_key")?),
                from: "manager_key".into(),
            })
        }
        Some(path) => {
            let path = Path::new(path);
            return Ok(ManagerKey::Pinned {
                key: Box::new(read(path)?),
                from: path.display().to_string(),
            });
        }
        None => {}
    }
    if let Some(env) = std::env::var_os("SERVICE_MGR_MANAGER_KEY").filter(|v| !v.is_empty()) {
        return manager_key(Some(&env.to_string_lossy()), endpoint);
    }
    let mine = default_config_dir().join(MANAGER_PUB);
    let mut tried = vec![mine.clone()];
    if is_local(endpoint) {
        tried.extend(local_candidates());
    }
    for path in &tried {
        if path.exists() {
            return Ok(ManagerKey::Pinned {
                key: Box::new(read(path)?),
                from: path.display().to_string(),
            });
        }
    }
    bail!(
        "no key for the manager at {endpoint}: copy the manager's {MANAGER_PUB} (in its state_dir; its \
         fingerprint is in its log and `service-mgrd status`) to {}, or name it with --manager-key FILE \
         (manager_key in an agent's config); for a 0.1 manager use `plaintext`",
        mine.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_a_line_a_file_or_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.key");
        let pk = crate::security::keygen(&file, Role::Manager, "mgr", false).unwrap();
        let line = pk.to_string();
        let from_line = manager_key(Some(&line), "tcp://mgr:5500").unwrap();
        assert!(matches!(from_line, ManagerKey::Pinned { key, .. } if *key == pk));
        let pub_file = dir.path().join("m.key.pub");
        let from_file = manager_key(Some(pub_file.to_str().unwrap()), "tcp://mgr:5500").unwrap();
        assert!(matches!(from_file, ManagerKey::Pinned { key, .. } if *key == pk));
        assert!(matches!(
            manager_key(Some("plaintext"), "tcp://mgr:5500").unwrap(),
            ManagerKey::Plaintext
        ));
        // A client key is not the manager's.
        let client = dir.path().join("c.key");
        crate::security::keygen(&client, Role::Client, "me", false).unwrap();
        let err = manager_key(
            Some(dir.path().join("c.key.pub").to_str().unwrap()),
            "tcp://m:1",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("holds a client key"), "{err:#}");
    }
}
