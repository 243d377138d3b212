//! The manager's key store, salt-key style: which keys are pending, accepted
//! or rejected, kept as one file per key.

use super::keyfile::write_file;
use super::{parse_key_lines, AuthError, KeyFileError, PublicKey, Purpose, Signed};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, DirBuilder};
use std::io::{self, ErrorKind};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Pending keys the [`KeyStore`] holds at most: anyone may announce a key, so
/// without a cap a stranger could fill the manager's disk.
pub const MAX_PENDING: usize = 1000;

/// Why the key store could not do what was asked. The text names the file or
/// the key; the cause (an I/O error, a malformed key) is the source.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("cannot create key directory {}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no key store at {} (the manager makes it on its first start; --keys-dir or the manager's state_dir names another)",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("cannot read key directory {}", .path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read key file {}", .path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid key file {}", .path.display())]
    InvalidKey {
        path: PathBuf,
        #[source]
        source: AuthError,
    },
    #[error("key file {} holds key {fingerprint}: it must be named by its fingerprint", .path.display())]
    Misnamed { path: PathBuf, fingerprint: String },
    #[error("too many pending keys ({0}); accept, reject or delete some first")]
    TooManyPending(usize),
    #[error("key {key} has the same fingerprint as the known key {other}; refusing it")]
    FingerprintClash {
        key: Box<PublicKey>,
        other: Box<PublicKey>,
    },
    #[error("no key matches {0:?} (give a fingerprint or a name)")]
    NoMatch(String),
    #[error("{selector:?} matches {count} keys: {list}; give a fingerprint")]
    Ambiguous {
        selector: String,
        count: usize,
        list: String,
    },
    #[error("cannot move {} to {}", .from.display(), .to.display())]
    Move {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {}", .path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", .path.display())]
    ReadAuthorized {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid authorized keys file {}", .path.display())]
    InvalidAuthorized {
        path: PathBuf,
        #[source]
        source: AuthError,
    },
    #[error(transparent)]
    Write(#[from] KeyFileError),
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
    pub fn open(dir: &Path) -> Result<KeyStore, KeyStoreError> {
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for sub in KeyState::ALL {
            let path = dir.join(sub.as_str());
            builder
                .create(&path)
                .map_err(|source| KeyStoreError::CreateDir { path, source })?;
        }
        KeyStore::load(dir)
    }

    fn load(dir: &Path) -> Result<KeyStore, KeyStoreError> {
        let mut store = KeyStore {
            dir: dir.to_owned(),
            keys: HashMap::new(),
            max_pending: MAX_PENDING,
        };
        store.reload()?;
        Ok(store)
    }

    /// Open an existing store only to read it (`mgmt keys list`): creates
    /// nothing, so someone without write access (a non-root user looking at
    /// /var/lib/service-mgr/keys) can still list it.
    pub fn open_read(dir: &Path) -> Result<KeyStore, KeyStoreError> {
        if !dir.is_dir() {
            return Err(KeyStoreError::Missing(dir.to_owned()));
        }
        KeyStore::load(dir)
    }

    /// Re-read every key file. A file that is not a key, or not named by its
    /// key's fingerprint, is an error naming it: better than silently trusting less or more.
    pub fn reload(&mut self) -> Result<(), KeyStoreError> {
        let mut keys: HashMap<String, (KeyState, PublicKey)> = HashMap::new();
        for state in KeyState::ALL {
            let d = self.dir.join(state.as_str());
            let unreadable = |source| KeyStoreError::ReadDir {
                path: d.clone(),
                source,
            };
            let entries = match fs::read_dir(&d) {
                // A store opened read-only may lack a state folder: no keys in that state.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                entries => entries.map_err(unreadable)?,
            };
            for entry in entries {
                let path = entry.map_err(unreadable)?.path();
                let file_name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if file_name.starts_with('.') {
                    continue; // our temp files
                }
                let text = match fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(source) => return Err(KeyStoreError::ReadKey { path, source }),
                };
                let key: PublicKey = match text.trim().parse() {
                    Ok(key) => key,
                    Err(source) => return Err(KeyStoreError::InvalidKey { path, source }),
                };
                if key.fingerprint() != file_name {
                    return Err(KeyStoreError::Misnamed {
                        path,
                        fingerprint: key.fingerprint(),
                    });
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
    pub fn submit(&mut self, key: &PublicKey) -> Result<Submission, KeyStoreError> {
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
            return Err(KeyStoreError::TooManyPending(pending));
        }
        self.add(KeyState::Pending, key)?;
        Ok(Submission {
            state: KeyState::Pending,
            new: true,
            name_clash,
        })
    }

    fn add(&mut self, state: KeyState, key: &PublicKey) -> Result<(), KeyStoreError> {
        let fp = key.fingerprint();
        if let Some((_, other)) = self
            .keys
            .values()
            .find(|(_, k)| k.fingerprint() == fp && k != key)
        {
            return Err(KeyStoreError::FingerprintClash {
                key: Box::new(key.clone()),
                other: Box::new(other.clone()),
            });
        }
        let path = self.dir.join(state.as_str()).join(&fp);
        write_file(&path, format!("{key}\n").as_bytes(), 0o600, true)?;
        self.keys.insert(key.key_id(), (state, key.clone()));
        Ok(())
    }

    /// The one key that `selector` names: a fingerprint, a key id or a name.
    fn find(&self, selector: &str) -> Result<(KeyState, PublicKey), KeyStoreError> {
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
            [] => Err(KeyStoreError::NoMatch(selector.to_owned())),
            _ => {
                let list: Vec<String> = hits
                    .iter()
                    .map(|(s, k)| format!("{} ({s} {} {})", k.fingerprint(), k.role, k.name))
                    .collect();
                Err(KeyStoreError::Ambiguous {
                    selector: selector.to_owned(),
                    count: hits.len(),
                    list: list.join(", "),
                })
            }
        }
    }

    fn set_state(&mut self, selector: &str, to: KeyState) -> Result<PublicKey, KeyStoreError> {
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
                    return Err(KeyStoreError::Move {
                        from: source,
                        to: target,
                        source: e,
                    })
                }
            }
        }
        self.remove_files(&fp, Some(to))?;
        self.keys.insert(key.key_id(), (to, key.clone()));
        Ok(key)
    }

    /// Remove the key's file from every state directory but `keep`.
    fn remove_files(&self, fingerprint: &str, keep: Option<KeyState>) -> Result<(), KeyStoreError> {
        for state in KeyState::ALL.into_iter().filter(|s| Some(*s) != keep) {
            let path = self.dir.join(state.as_str()).join(fingerprint);
            match fs::remove_file(&path) {
                Err(source) if source.kind() != ErrorKind::NotFound => {
                    return Err(KeyStoreError::Remove { path, source })
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn accept(&mut self, selector: &str) -> Result<PublicKey, KeyStoreError> {
        self.set_state(selector, KeyState::Accepted)
    }

    pub fn reject(&mut self, selector: &str) -> Result<PublicKey, KeyStoreError> {
        self.set_state(selector, KeyState::Rejected)
    }

    /// Forget a key entirely: it may submit itself again and become pending.
    pub fn delete(&mut self, selector: &str) -> Result<PublicKey, KeyStoreError> {
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

    /// [`verify`](super::verify) against the accepted keys, telling a pending or rejected
    /// key (NotAccepted) from an unknown one.
    pub fn verify(
        &self,
        signed: &Signed,
        purpose: Purpose,
    ) -> Result<(PublicKey, Value), AuthError> {
        let key = self.verify_signature(signed, purpose)?;
        let body = serde_json::from_str(&signed.body)
            .map_err(|e| super::malformed(format!("signed body is not JSON: {e}")))?;
        Ok((key, body))
    }

    /// [`verify_signature`](super::verify_signature) against the accepted keys,
    /// as [`KeyStore::verify`] without reading the body.
    pub fn verify_signature(
        &self,
        signed: &Signed,
        purpose: Purpose,
    ) -> Result<PublicKey, AuthError> {
        if let Some((state, key)) = self.keys.get(&signed.key) {
            if *state != KeyState::Accepted {
                return Err(AuthError::NotAccepted(key.fingerprint()));
            }
        }
        super::verify_signature(signed, purpose, |id| self.accepted(id))
    }

    /// Accept every key listed in an authorized-keys file (see [`parse_key_lines`]).
    /// The file is the operator's word: a listed key is accepted even if it was
    /// pending or rejected; to revoke one, remove it from the file and reject it.
    /// Nothing changes if any line is invalid. Returns the keys newly accepted.
    pub fn import_accepted(&mut self, path: &Path) -> Result<Vec<PublicKey>, KeyStoreError> {
        let text = fs::read_to_string(path).map_err(|source| KeyStoreError::ReadAuthorized {
            path: path.to_owned(),
            source,
        })?;
        let keys = parse_key_lines(&text).map_err(|source| KeyStoreError::InvalidAuthorized {
            path: path.to_owned(),
            source,
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::testing::{chain, client, mode};
    use crate::security::{sign_body, KeyPair, Role};
    use serde_json::json;
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
        let err = chain(&store.reload().unwrap_err());
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
        let err = chain(&store.import_accepted(&file).unwrap_err());
        assert!(
            err.contains("authorized_keys") && err.contains("line 2"),
            "{err}"
        );
        assert_eq!(store.list().len(), 2);
    }

    /// A non-root `mgmt keys list` on a store it cannot write tried to create
    /// pending/ and failed.
    #[test]
    fn reading_a_store_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("keys");
        fs::create_dir(&root).unwrap();
        fs::create_dir(root.join("accepted")).unwrap();
        let store = KeyStore::open_read(&root).unwrap();
        assert!(store.list().is_empty());
        assert!(!root.join("pending").exists() && !root.join("rejected").exists());
        let err = KeyStore::open_read(&dir.path().join("none"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no key store at"), "{err}");
    }
}
