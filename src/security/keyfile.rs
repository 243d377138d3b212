//! Secret key files: TOML with the two secrets, mode 0600, written atomically;
//! and [`keygen`], which writes a new key pair and its `.pub` line.

use super::{check_name, decode_array, malformed, AuthError, KeyPair, PublicKey, Role};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use x25519_dalek::StaticSecret;

/// Why a key file could not be read or written. The text names the file; the
/// cause (an I/O error, a malformed key) is the source.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot open secret key file {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot stat {}", .path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "secret key file {p} is accessible by group or others (mode {mode:03o}); run `chmod 600 {p}`",
        p = .path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid secret key file {}", .path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: AuthError,
    },
    #[error("{} is not a file path", .0.display())]
    NotAFile(PathBuf),
    #[error(
        "{} already exists; refusing to overwrite it (use --force to replace it)",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("cannot create the folder {} for the key", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A key that cannot be made (a bad name).
    #[error(transparent)]
    Key(#[from] AuthError),
    #[error(
        "{p} is writable by every user (mode {mode:03o}): anyone could add a key to it; run `chmod o-w {p}`",
        p = .path.display()
    )]
    WorldWritable { path: PathBuf, mode: u32 },
    #[error(
        "{p} is owned by uid {owner}, neither root nor this user (uid {me}): that user could add a key to it; run `chown {me} {p}`",
        p = .path.display()
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
}

/// Whether a file or folder that says which keys to trust (authorized_clients,
/// the key store) may be trusted, as sshd's StrictModes: not writable by
/// every user, and owned by root or by the user we run as. `meta` is of the
/// open file (fstat), so the check and the read are of the same file.
pub fn check_trusted(path: &Path, meta: &fs::Metadata) -> Result<(), KeyFileError> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(KeyFileError::WorldWritable {
            path: path.to_owned(),
            mode,
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(KeyFileError::ForeignOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// [`check_trusted`] for a path (a folder), following symlinks.
pub fn check_trusted_path(path: &Path) -> Result<(), KeyFileError> {
    let meta = fs::metadata(path).map_err(|source| KeyFileError::Stat {
        path: path.to_owned(),
        source,
    })?;
    check_trusted(path, &meta)
}

/// Read a file of public keys to trust (authorized_clients, a key store
/// entry), refusing one that fails [`check_trusted`]. A file that cannot be
/// opened or read is a [`KeyFileError::Read`] (NotFound is for the caller to tell).
pub fn read_trusted(path: &Path) -> Result<String, KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(read_err)?;
    let meta = f.metadata().map_err(|source| KeyFileError::Stat {
        path: path.to_owned(),
        source,
    })?;
    check_trusted(path, &meta)?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(read_err)?;
    Ok(text)
}

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
    pub fn save(&self, path: &Path, force: bool) -> Result<(), KeyFileError> {
        write_file(path, self.to_toml().as_bytes(), 0o600, force)
    }

    /// Read a secret file, refusing one that group or others can access (as ssh does).
    pub fn load(path: &Path) -> Result<KeyPair, KeyFileError> {
        let path_buf = || path.to_owned();
        let mut f = File::open(path).map_err(|source| KeyFileError::Open {
            path: path_buf(),
            source,
        })?;
        let mode = f
            .metadata()
            .map_err(|source| KeyFileError::Stat {
                path: path_buf(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path_buf(),
                mode: mode & 0o777,
            });
        }
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(|source| KeyFileError::Read {
                path: path_buf(),
                source,
            })?;
        KeyPair::from_toml(&text).map_err(|source| KeyFileError::Invalid {
            path: path_buf(),
            source,
        })
    }
}

/// Write `data` to `path` with exactly `mode`. Without `force`, `create_new`
/// (O_EXCL: a symlink planted at `path` is not followed). With it, a temp file
/// in the same directory renamed over `path`: readers never see half a key and
/// the mode is never wider than asked.
pub(super) fn write_file(
    path: &Path,
    data: &[u8],
    mode: u32,
    force: bool,
) -> Result<(), KeyFileError> {
    let target = if force {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| KeyFileError::NotAFile(path.to_owned()))?;
        let mut rnd = [0u8; 6];
        OsRng.fill_bytes(&mut rnd);
        dir.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            hex::encode(rnd)
        ))
    } else {
        path.to_owned()
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&target)
        .map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists if !force => KeyFileError::Exists(path.to_owned()),
            _ => KeyFileError::Create {
                path: target.clone(),
                source: e,
            },
        })?;
    let written = (|| {
        // The umask may have taken bits we want (0644 for a .pub file).
        f.set_permissions(Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        if force {
            fs::rename(&target, path)?;
        }
        Ok::<_, io::Error>(())
    })();
    written.map_err(|source| {
        let _ = fs::remove_file(&target);
        KeyFileError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// Create a key pair: PATH gets the secret (0600), PATH.pub the public key line (0644).
pub fn keygen(path: &Path, role: Role, name: &str, force: bool) -> Result<PublicKey, KeyFileError> {
    let id = KeyPair::generate(role, name)?;
    // A new user has no ~/.config/service-mgr yet: make it, private like ~/.ssh.
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| KeyFileError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::testing::{client, mode};
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
    fn trusted_files_are_neither_world_writable_nor_another_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        fs::write(&path, "# none\n").unwrap();
        assert_eq!(read_trusted(&path).unwrap(), "# none\n");
        fs::set_permissions(&path, Permissions::from_mode(0o646)).unwrap();
        let err = read_trusted(&path).unwrap_err().to_string();
        assert!(
            err.contains("mode 646")
                && err.contains(&format!("run `chmod o-w {}`", path.display())),
            "{err}"
        );
        fs::set_permissions(&path, Permissions::from_mode(0o664)).unwrap();
        assert!(
            read_trusted(&path).is_ok(),
            "group-writable is the admin's call"
        );
        let missing = read_trusted(&dir.path().join("none")).unwrap_err();
        assert!(
            matches!(&missing, KeyFileError::Read { source, .. } if source.kind() == ErrorKind::NotFound),
            "{missing:?}"
        );
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let err = read_trusted(&path).unwrap_err().to_string();
            assert!(
                err.contains("owned by uid 65534") && err.contains("run `chown 0 "),
                "{err}"
            );
        }
    }

    /// A new user's first `keygen --role client` failed: ~/.config/service-mgr
    /// did not exist and nothing made it.
    #[test]
    fn keygen_makes_its_missing_folder_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home/.config/service-mgr/client.key");
        keygen(&path, Role::Client, "newbie", false).unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert!(KeyPair::load(&path).is_ok());
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
}
