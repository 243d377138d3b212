//! The client's config file, `client.conf`: what a user would otherwise type
//! on every command line (the manager's endpoint and key, the client key, the
//! format and waits), so that `service-mgr client -T web -c status -s nginx`
//! is the whole command.
//!
//! `/etc/service-mgr/client.conf` (the site's), then the user's
//! `~/.config/service-mgr/client.conf` on top of it, key by key; or only the
//! file named by `--conf FILE` / `$SERVICE_MGR_CLIENT_CONF` (`none`: no file).
//! The command line and the environment win over both.

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file name in each config directory.
pub const CLIENT_CONF: &str = "client.conf";

/// The settings of one or more client.conf files; unset is `None`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConf {
    /// The manager's frontend endpoint (`-e`).
    pub endpoint: Option<String>,
    /// The client key file (`-k`); relative to the file that names it.
    pub key: Option<PathBuf>,
    /// The manager's public key: a file (relative to this file), its line, or
    /// `plaintext` (`--manager-key`).
    pub manager_key: Option<String>,
    /// `table`, `json`, `jsonl` or `legacy` (`--format`).
    pub format: Option<String>,
    /// Seconds to wait for results (`-w`).
    pub wait: Option<f64>,
    /// Milliseconds to wait for the manager's answer per try (`-t`).
    pub timeout: Option<u64>,
    /// Tries to reach the manager (`-r`).
    pub retries: Option<u32>,
}

impl ClientConf {
    /// `over`'s settings where it has them, ours elsewhere.
    fn merged(self, over: ClientConf) -> ClientConf {
        ClientConf {
            endpoint: over.endpoint.or(self.endpoint),
            key: over.key.or(self.key),
            manager_key: over.manager_key.or(self.manager_key),
            format: over.format.or(self.format),
            wait: over.wait.or(self.wait),
            timeout: over.timeout.or(self.timeout),
            retries: over.retries.or(self.retries),
        }
    }

    /// Read one file; relative paths in it are made relative to its directory.
    pub fn read(path: &Path) -> Result<ClientConf> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the client config {}; fix the path, or set \
                 SERVICE_MGR_CLIENT_CONF=none to use none",
                path.display()
            )
        })?;
        let mut conf: ClientConf = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a valid client config: {}(keys: endpoint, key, manager_key, format, \
                 wait, timeout, retries)",
                path.display(),
                e
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        conf.key = conf.key.map(|k| dir.join(k));
        conf.manager_key = conf.manager_key.map(|m| {
            let is_value = m.trim() == super::pin::PLAINTEXT
                || m.trim().starts_with(crate::security::KEY_PREFIX);
            if is_value {
                m
            } else {
                dir.join(m).to_string_lossy().into_owned()
            }
        });
        if let Some(f) = &conf.format {
            <crate::output::Format as clap::ValueEnum>::from_str(f, true).map_err(|_| {
                anyhow::anyhow!(
                    "{}: format = {f:?}: expected table, json, jsonl or legacy",
                    path.display()
                )
            })?;
        }
        if conf.wait.is_some_and(|w| !w.is_finite() || w < 0.0) {
            bail!(
                "{}: wait must be a number of seconds, 0 or more",
                path.display()
            );
        }
        Ok(conf)
    }

    /// The client's settings: the file `explicit` names (`--conf`), else
    /// `$SERVICE_MGR_CLIENT_CONF`, else the site's and the user's files
    /// (either may be missing).
    pub fn load(explicit: Option<&Path>) -> Result<ClientConf> {
        let named = explicit.map(Path::to_path_buf).or_else(|| {
            std::env::var_os("SERVICE_MGR_CLIENT_CONF")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        match named {
            Some(p) if p.as_os_str() == "none" => Ok(ClientConf::default()),
            Some(p) => ClientConf::read(&p),
            None => {
                let mut conf = ClientConf::default();
                for path in default_paths() {
                    if path.exists() {
                        conf = conf.merged(ClientConf::read(&path)?);
                    }
                }
                Ok(conf)
            }
        }
    }

    /// Where and how to reach the manager: the command line's `-e`, `-k` and
    /// `--manager-key` where given, else the environment's key settings
    /// (`$SERVICE_MGR_KEY`, `$SERVICE_MGR_MANAGER_KEY`, read later by the
    /// key loaders), else this file's, else the defaults.
    pub fn connection(
        &self,
        endpoint: Option<&str>,
        key: Option<&Path>,
        manager_key: Option<&str>,
    ) -> Connection {
        let unless_env = |var: &str| std::env::var_os(var).is_none_or(|v| v.is_empty());
        Connection {
            endpoint: endpoint
                .or(self.endpoint.as_deref())
                .map(str::to_owned)
                .unwrap_or_else(|| super::default_endpoint("localhost", super::port::FRONTEND)),
            key: key
                .map(Path::to_path_buf)
                .or(self.key.clone().filter(|_| unless_env("SERVICE_MGR_KEY"))),
            manager_key: manager_key.map(str::to_owned).or(self
                .manager_key
                .clone()
                .filter(|_| unless_env("SERVICE_MGR_MANAGER_KEY"))),
        }
    }

    /// The output format it names (checked when read).
    pub fn format(&self) -> Option<crate::output::Format> {
        let f = self.format.as_deref()?;
        <crate::output::Format as clap::ValueEnum>::from_str(f, true).ok()
    }
}

/// The manager's endpoint, and the key settings to load (see [`ClientConf::connection`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub endpoint: String,
    pub key: Option<PathBuf>,
    pub manager_key: Option<String>,
}

/// The site's file, then the user's (which wins).
pub fn default_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/etc/service-mgr").join(CLIENT_CONF)];
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(dir) = user {
        let path = dir.join("service-mgr").join(CLIENT_CONF);
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_relative_to_itself_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.conf");
        std::fs::write(
            &path,
            "endpoint = \"tcp://m1:5500\"\nkey = \"client.key\"\nmanager_key = \"m.pub\"\n\
             format = \"json\"\nwait = 5\ntimeout = 300\nretries = 2\n",
        )
        .unwrap();
        let conf = ClientConf::read(&path).unwrap();
        assert_eq!(conf.endpoint.as_deref(), Some("tcp://m1:5500"));
        assert_eq!(conf.key, Some(dir.path().join("client.key")));
        assert_eq!(
            conf.manager_key,
            Some(dir.path().join("m.pub").to_string_lossy().into_owned())
        );
        assert_eq!(conf.format(), Some(crate::output::Format::Json));
        assert_eq!(
            (conf.wait, conf.timeout, conf.retries),
            (Some(5.0), Some(300), Some(2))
        );

        std::fs::write(&path, "manager_key = \"plaintext\"\n").unwrap();
        assert_eq!(
            ClientConf::read(&path).unwrap().manager_key.as_deref(),
            Some("plaintext")
        );
        // A typo is an error that lists the keys, not a silently ignored line.
        std::fs::write(&path, "endpiont = \"tcp://m1:5500\"\n").unwrap();
        let err = format!("{:#}", ClientConf::read(&path).unwrap_err());
        assert!(
            err.contains("endpiont") && err.contains("keys: endpoint"),
            "{err}"
        );
        std::fs::write(&path, "format = \"yaml\"\n").unwrap();
        let err = format!("{:#}", ClientConf::read(&path).unwrap_err());
        assert!(err.contains("expected table, json"), "{err}");
    }

    #[test]
    fn the_users_file_wins_key_by_key() {
        let site = ClientConf {
            endpoint: Some("tcp://m1:5500".into()),
            retries: Some(5),
            ..Default::default()
        };
        let user = ClientConf {
            endpoint: Some("tcp://m2:5500".into()),
            wait: Some(3.0),
            ..Default::default()
        };
        let conf = site.merged(user);
        assert_eq!(conf.endpoint.as_deref(), Some("tcp://m2:5500"));
        assert_eq!((conf.retries, conf.wait), (Some(5), Some(3.0)));
    }
}
