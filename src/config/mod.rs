//! Configuration files of the manager and the agent.
//!
//! Two syntaxes are read into the same structs: TOML (ours) and the 0.1 INI
//! form (`[Default]` section, unquoted values). An INI file is rewritten line
//! for line into TOML before parsing, so every error names the line of the
//! file the user wrote. Precedence is defaults < file < command line; the
//! command line is applied by the roles. The `[[policy]]` tables and their
//! compiled form live in [`policy`].

pub mod client;
pub mod pin;
pub mod policy;

pub use policy::{Decision, DenyRule, Policy, PolicyConfig, PolicyError, PolicyRule};

use anyhow::{bail, Context, Result};
use serde::{de, Deserialize, Deserializer, Serialize};
use std::path::{Path, PathBuf};

/// Default location of the manager's config (0.1's).
pub const MANAGER_CONFIG: &str = "/etc/service-mgr/service-mgrd.conf";
/// Default location of the agent's config (0.1's).
pub const AGENT_CONFIG: &str = "/etc/service-mgr/service-mgr-agentd.conf";

/// Commands an agent runs unless its config says otherwise.
pub const DEFAULT_ALLOWED: [&str; 5] = crate::protocol::STANDARD_COMMANDS;

/// The manager daemon's settings (`service-mgrd.conf`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// ROUTER socket that clients send requests to.
    pub frontend_endpoint: String,
    /// XPUB socket that agents subscribe to.
    pub backend_endpoint: String,
    /// PULL socket that agents push results to.
    pub sink_endpoint: String,
    /// REP socket for management commands.
    pub mgmt_endpoint: String,
    /// Where results are published to clients. Default: the frontend's
    /// interface on a random port (0.1 always used every interface).
    pub result_endpoint: Option<String>,
    /// How long (seconds) the manager keeps results of a job that no client has
    /// collected yet.
    #[serde(deserialize_with = "lenient_u64")]
    pub job_ttl: u64,
    /// How long (seconds) the job store keeps finished jobs and their results.
    #[serde(deserialize_with = "lenient_u64")]
    pub job_retention: u64,
    /// Size cap of the job store in MiB (0: none): past it the oldest jobs
    /// go first, before `job_retention` would remove them.
    #[serde(deserialize_with = "lenient_u64")]
    pub job_store_max_mb: u64,
    /// How long (seconds) an agent that went away (lost or stopped) stays
    /// known: until then a request to its topic expects it and reports it
    /// `no_response`, unless `mgmt agents forget NODE` removes it sooner.
    #[serde(deserialize_with = "lenient_u64")]
    pub forget_after: u64,
    /// Where the manager keeps its key store and job store. Default:
    /// /var/lib/service-mgr as root, else ~/.local/state/service-mgr.
    pub state_dir: Option<PathBuf>,
    /// The job store: unset for the embedded one (jobs.redb in state_dir), or
    /// a PostgreSQL URL (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`)
    /// for a store several managers share.
    pub job_store: Option<String>,
    /// Serve unsigned 0.1 clients and agents (and warn about it in the log).
    #[serde(deserialize_with = "lenient_bool")]
    pub allow_unsigned: bool,
    /// Seconds a signed request stays valid (clocks must agree this well).
    #[serde(deserialize_with = "lenient_u64")]
    pub request_window: u64,
    /// `HOST:PORT` (or `:PORT` for loopback) to serve Prometheus metrics on,
    /// over plain unauthenticated HTTP; empty: off.
    pub metrics_endpoint: String,
    /// The manager's key pair: its X25519 half is the CURVE key clients and
    /// agents pin. Made at first start. Default: manager.key in state_dir.
    pub key_file: Option<PathBuf>,
    /// Accepted client keys (names, fingerprints, key lines or "*") that may
    /// read the management socket (status, agents, jobs). Whoever holds the
    /// manager's own key may always.
    #[serde(deserialize_with = "lenient_list")]
    pub mgmt_read_keys: Vec<String>,
    /// Accepted client keys that may also shut the manager down. Default: none
    /// (only the manager's own key, i.e. root or the daemon's user on its host).
    #[serde(deserialize_with = "lenient_list")]
    pub mgmt_admin_keys: Vec<String>,
}

impl ManagerConfig {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(default_state_dir)
    }
    pub fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.state_dir().join("manager.key"))
    }
    /// Where the jobs go (`job_store`; checked by [`Check`]).
    pub fn job_store_location(&self) -> crate::jobstore::Location {
        match self.job_store.as_deref().filter(|s| !s.is_empty()) {
            Some(url) => crate::jobstore::Location::Postgres(url.to_owned()),
            None => crate::jobstore::Location::Redb(self.state_dir().join("jobs.redb")),
        }
    }
}

/// /var/lib/service-mgr for root, the user's state directory otherwise, so that
/// a manager started by hand does not need root.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/service-mgr");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("service-mgr")
}

/// /etc/service-mgr for root, the user's config directory otherwise.
pub fn default_config_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/etc/service-mgr");
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("service-mgr")
}

/// Where the client's key comes from when no `-k` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// $SERVICE_MGR_KEY names it: it must exist, as with `-k`.
    Named(PathBuf),
    /// client.key in the config directory, used when it exists.
    Default(PathBuf),
    /// SERVICE_MGR_KEY=none: send unsigned (0.1) requests on purpose.
    Unsigned,
}

/// The client's key setting: $SERVICE_MGR_KEY, else client.key in the config directory.
pub fn client_key() -> ClientKey {
    match std::env::var_os("SERVICE_MGR_KEY") {
        Some(v) if v == "none" => ClientKey::Unsigned,
        Some(v) => ClientKey::Named(PathBuf::from(v)),
        None => ClientKey::Default(default_config_dir().join("client.key")),
    }
}

/// The client key: the file named with -k (must exist), else the default one
/// if it exists; `None` means the request goes unsigned.
pub fn load_client_key(
    explicit: Option<&std::path::Path>,
) -> Result<Option<std::sync::Arc<crate::security::KeyPair>>> {
    // A key the user named (by -k or $SERVICE_MGR_KEY) must load: falling back
    // to unsigned would hide a typo until the agents refuse the request.
    let (path, named_by_env) = match explicit {
        Some(p) => (p.to_owned(), false),
        None => match client_key() {
            ClientKey::Unsigned => return Ok(None),
            ClientKey::Named(p) => (p, true),
            ClientKey::Default(p) if p.exists() => (p, false),
            ClientKey::Default(_) => return Ok(None),
        },
    };
    let key = crate::security::KeyPair::load(&path).with_context(|| {
        if named_by_env {
            "SERVICE_MGR_KEY names a key that cannot be used (SERVICE_MGR_KEY=none sends unsigned requests)"
        } else {
            "cannot use the client key"
        }
    })?;
    anyhow::ensure!(
        key.role() == crate::security::Role::Client,
        "{} holds a {} key; requests must be signed with a client key (service-mgr keygen --role client)",
        path.display(),
        key.role()
    );
    Ok(Some(std::sync::Arc::new(key)))
}

/// Where `keygen --role client` writes: $SERVICE_MGR_KEY, else client.key in the config directory.
pub fn default_client_key() -> PathBuf {
    match client_key() {
        ClientKey::Named(p) => p,
        ClientKey::Default(_) | ClientKey::Unsigned => default_config_dir().join("client.key"),
    }
}

/// The first of the default ports (the manager's frontend). The others keep
/// their distance from it, so `$SERVICE_MGR_PORT` moves all of them at once:
/// a second instance, or a machine where 5500-6000 are taken.
pub const DEFAULT_BASE_PORT: u16 = 5500;

/// Distances of each default port from the base.
pub mod port {
    pub const FRONTEND: u16 = 0;
    pub const BACKEND: u16 = 100;
    pub const SINK: u16 = 200;
    pub const MGMT: u16 = 300;
    pub const AGENT_MGMT: u16 = 500;
}

/// The base port: 5500, or `$SERVICE_MGR_PORT` when set; an unusable value is
/// an error naming it (the daemons and the client report it before anything).
pub fn base_port() -> Result<u16, String> {
    match std::env::var("SERVICE_MGR_PORT") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p >= 1 && *p <= u16::MAX - port::AGENT_MGMT)
            .ok_or_else(|| {
                format!(
                    "SERVICE_MGR_PORT={v:?} is not a port from 1 to {}; unset it for the default ports 5500-6000",
                    u16::MAX - port::AGENT_MGMT
                )
            }),
        _ => Ok(DEFAULT_BASE_PORT),
    }
}

/// A default endpoint: `tcp://HOST:PORT` with the base port plus `offset`.
pub fn default_endpoint(host: &str, offset: u16) -> String {
    format!(
        "tcp://{host}:{}",
        base_port().unwrap_or(DEFAULT_BASE_PORT) + offset
    )
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            frontend_endpoint: default_endpoint("*", port::FRONTEND),
            backend_endpoint: default_endpoint("*", port::BACKEND),
            sink_endpoint: default_endpoint("*", port::SINK),
            mgmt_endpoint: default_endpoint("*", port::MGMT),
            result_endpoint: None,
            job_ttl: 600,
            job_retention: 7 * 24 * 3600,
            job_store_max_mb: 1024,
            forget_after: 7 * 24 * 3600,
            state_dir: None,
            job_store: None,
            allow_unsigned: false,
            request_window: 60,
            metrics_endpoint: String::new(),
            key_file: None,
            mgmt_read_keys: vec!["*".into()],
            mgmt_admin_keys: Vec::new(),
        }
    }
}

/// Which program the agent runs to control a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceManagerKind {
    /// `service` if on PATH, else `systemctl`, else `rc-service`.
    Auto,
    /// `service NAME CMD` (FreeBSD, Debian's and RHEL's service(8)).
    Service,
    /// `systemctl CMD NAME`.
    Systemctl,
    /// `rc-service NAME CMD` (OpenRC).
    RcService,
}

/// The agent's settings (`service-mgr-agentd.conf`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The manager's agent (backend) endpoint; several managers comma-separated,
    /// each of which the agent stays connected to.
    pub manager_endpoint: String,
    /// The manager's sink (PULL) endpoint, plaintext only; with several
    /// managers one per manager, in the same order.
    pub sink_endpoint: String,
    /// The manager's public key (a manager.key.pub file or its line), pinned:
    /// the agent talks to nobody else. "plaintext" for a 0.1 or allow_unsigned
    /// manager. Default: manager.key.pub in the config directory, else that of
    /// a manager on this host. With several managers: one for all (they share
    /// their key pair), or one per manager, comma-separated in the same order.
    pub manager_key: Option<String>,
    /// REP socket for management commands.
    pub mgmt_endpoint: String,
    /// This node's name; default: the host name.
    pub node: Option<String>,
    /// Extra topics (groups) besides `any`, the OS name and the node name.
    /// 0.1 wrote them comma-separated; surrounding blanks are ignored.
    #[serde(deserialize_with = "lenient_list")]
    pub topics: Vec<String>,
    /// Which service manager to drive.
    pub service_manager: ServiceManagerKind,
    /// A program to run instead, called as `PROGRAM NAME CMD` (as service(8)).
    pub service_command: Option<PathBuf>,
    /// Commands the agent accepts; anything else is refused.
    #[serde(deserialize_with = "lenient_list")]
    pub allowed_commands: Vec<String>,
    /// Commands beyond start, stop, restart, reload and status that this
    /// host's service manager knows (e.g. condrestart); only these and the
    /// standard five may appear in allowed_commands and policies.
    #[serde(deserialize_with = "lenient_list")]
    pub custom_commands: Vec<String>,
    /// Seconds a service command may run before its process group is killed.
    #[serde(deserialize_with = "lenient_u64")]
    pub command_timeout: u64,
    /// Seconds a stopping agent (SIGTERM, `agent.shutdown`) waits for running
    /// commands to finish and deliver their results; what still runs then is
    /// killed and answered `interrupted`. Service stop timeouts must exceed it.
    #[serde(deserialize_with = "lenient_u64")]
    pub stop_timeout: u64,
    /// Bytes of stdout and of stderr kept per command; the rest is cut with a marker.
    #[serde(deserialize_with = "lenient_u64")]
    pub max_output: u64,
    /// Service commands running at once; more requests are refused as busy.
    #[serde(deserialize_with = "lenient_u64")]
    pub max_concurrent: u64,
    /// Seconds between heartbeats to the manager.
    #[serde(deserialize_with = "lenient_u64")]
    pub heartbeat_interval: u64,
    /// Names of the agent's own service: `stop`/`restart` of it is answered
    /// first and run a moment later, so the answer is not lost.
    #[serde(deserialize_with = "lenient_list")]
    pub self_services: Vec<String>,
    /// Run unsigned (0.1) requests too, subject to allowed_commands only.
    #[serde(deserialize_with = "lenient_bool")]
    pub allow_unsigned: bool,
    /// The agent's key; generated on first start if missing. Default:
    /// agent.key in /etc/service-mgr (root) or ~/.config/service-mgr.
    pub key_file: Option<PathBuf>,
    /// Public key lines of the clients whose signed requests this agent runs
    /// (subject to `policy`). Default: authorized_clients beside key_file.
    pub authorized_clients: Option<PathBuf>,
    /// Seconds a signed request stays valid.
    #[serde(deserialize_with = "lenient_u64")]
    pub request_window: u64,
    /// `HOST:PORT` (or `:PORT` for loopback) to serve Prometheus metrics on,
    /// over plain unauthenticated HTTP; empty: off.
    pub metrics_endpoint: String,
    /// Who may run what: `[[policy]]` rules, default deny.
    pub policy: Vec<PolicyRule>,
}

/// One manager of an agent's list: where it is and how to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerAddr {
    pub endpoint: String,
    /// Its sink (plaintext only).
    pub sink: String,
    /// Its `manager_key` setting.
    pub key: Option<String>,
}

impl AgentConfig {
    /// The managers the agent connects to: `manager_endpoint` split at commas,
    /// each with its sink and key (one given for all, or one per manager).
    pub fn managers(&self) -> Result<Vec<ManagerAddr>> {
        let split = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let endpoints = split(&self.manager_endpoint);
        anyhow::ensure!(
            !endpoints.is_empty(),
            "manager_endpoint is empty; set it to the manager's tcp://HOST:5600 (several comma-separated)"
        );
        let n = endpoints.len();
        let per_manager = |what: &str, list: Vec<String>| -> Result<Vec<Option<String>>> {
            match list.len() {
                0 => Ok(vec![None; n]),
                1 => Ok(vec![list.into_iter().next(); n]),
                m if m == n => Ok(list.into_iter().map(Some).collect()),
                m => anyhow::bail!(
                    "{what} lists {m} values for {n} managers in manager_endpoint; give one for all                      or one per manager, in the same order"
                ),
            }
        };
        let sinks = per_manager("sink_endpoint", split(&self.sink_endpoint))?;
        let keys = per_manager(
            "manager_key",
            self.manager_key.as_deref().map(split).unwrap_or_default(),
        )?;
        Ok(endpoints
            .into_iter()
            .zip(sinks)
            .zip(keys)
            .map(|((endpoint, sink), key)| ManagerAddr {
                endpoint,
                sink: sink.unwrap_or_default(),
                key,
            })
            .collect())
    }

    pub fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| default_config_dir().join("agent.key"))
    }
    /// Default: in the folder of `key_file` (README, service-mgr.conf(5)).
    pub fn authorized_clients(&self) -> PathBuf {
        self.authorized_clients.clone().unwrap_or_else(|| {
            self.key_file()
                .parent()
                .unwrap_or(Path::new(""))
                .join("authorized_clients")
        })
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            manager_endpoint: default_endpoint("localhost", port::BACKEND),
            sink_endpoint: default_endpoint("localhost", port::SINK),
            manager_key: None,
            mgmt_endpoint: default_endpoint("*", port::AGENT_MGMT),
            node: None,
            topics: Vec::new(),
            service_manager: ServiceManagerKind::Auto,
            service_command: None,
            allowed_commands: DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect(),
            custom_commands: Vec::new(),
            command_timeout: 300,
            stop_timeout: 30,
            max_output: 4 * 1024 * 1024,
            max_concurrent: 64,
            heartbeat_interval: 2,
            self_services: [
                "service-mgr-agentd",
                "service-mgr-agent",
                "service_mgr_agentd",
            ]
            .map(String::from)
            .to_vec(),
            allow_unsigned: false,
            key_file: None,
            authorized_clients: None,
            request_window: 60,
            metrics_endpoint: String::new(),
            policy: Vec::new(),
        }
    }
}

/// What a configuration must satisfy beyond its types, checked before a
/// daemon starts so that a typo is an error on the terminal, not a refusal
/// found later.
pub trait Check {
    fn check(&self) -> Result<()>;
}

/// An empty metrics_endpoint is off; anything else must be `HOST:PORT`.
fn check_metrics_endpoint(endpoint: &str) -> Result<()> {
    if !endpoint.is_empty() {
        crate::metrics::parse_endpoint(endpoint)?;
    }
    Ok(())
}

impl Check for ManagerConfig {
    fn check(&self) -> Result<()> {
        base_port().map_err(anyhow::Error::msg)?;
        if let Some(url) = self.job_store.as_deref().filter(|s| !s.is_empty()) {
            anyhow::ensure!(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "job_store: {:?} is not a postgres:// URL; leave job_store unset for the embedded store in state_dir",
                crate::jobstore::Location::Postgres(url.to_owned()).to_string()
            );
        }
        check_metrics_endpoint(&self.metrics_endpoint)
    }
}

impl Check for AgentConfig {
    fn check(&self) -> Result<()> {
        base_port().map_err(anyhow::Error::msg)?;
        check_metrics_endpoint(&self.metrics_endpoint)?;
        let known: Vec<&str> = crate::protocol::STANDARD_COMMANDS
            .iter()
            .copied()
            .chain(self.custom_commands.iter().map(String::as_str))
            .collect();
        for custom in &self.custom_commands {
            let plain = !custom.is_empty()
                && !custom.starts_with('-')
                && custom.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            anyhow::ensure!(
                plain,
                "custom_commands: {custom:?} is not a plain command word (lower-case letters, digits, - and _)"
            );
        }
        let unknown = |setting: &str, cmd: &str| {
            let hint = known
                .iter()
                .filter(|k| strsim::damerau_levenshtein(k, cmd) <= 2)
                .min_by_key(|k| strsim::damerau_levenshtein(k, cmd))
                .map(|k| format!(" (did you mean {k:?}?)"))
                .unwrap_or_default();
            anyhow::anyhow!(
                "{setting}: unknown command {cmd:?}{hint}; the commands are {}; add others this host's service manager knows to custom_commands",
                known.join(", ")
            )
        };
        if let Some(c) = self
            .allowed_commands
            .iter()
            .find(|c| !known.contains(&c.as_str()))
        {
            return Err(unknown("allowed_commands", c));
        }
        for rule in &self.policy {
            // Globs (`*`, `re*`) are patterns, not names: only plain words are checked.
            let plain = |c: &&String| !c.contains(['*', '?', '[', '{']);
            if let Some(c) = rule
                .commands
                .iter()
                .filter(plain)
                .find(|c| !known.contains(&c.as_str()))
            {
                return Err(unknown(&format!("[[policy]] {:?}: commands", rule.name), c));
            }
        }
        Ok(())
    }
}

/// Load a config file. `explicit` is false for the built-in default path, whose
/// absence means "run on defaults"; a file named on the command line must exist.
pub fn load<T: for<'de> Deserialize<'de> + Default>(path: &Path, explicit: bool) -> Result<T> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(T::default()),
        // Typically root's daemon config met by a user trying things out.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !explicit => bail!(
            "cannot read config file {}: permission denied; it is the default for this role \
             and another user's: run as that user, or name a config of your own with \
             -f FILE (-f /dev/null: the built-in defaults)",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read config file {}", path.display()))
        }
    };
    parse(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Parse config text, TOML or the 0.1 INI form.
pub fn parse<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T> {
    let toml_text = if is_ini(text) {
        ini_to_toml(text)?
    } else {
        text.to_owned()
    };
    // toml's message names the line, the column and the key.
    toml::from_str(&toml_text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
}

/// Load a config file, then apply `KEY=VALUE` overrides from the command line.
/// A value is read as TOML when it parses as such (`30`, `["a", "b"]`), else as a string.
pub fn load_with<T>(path: &Path, explicit: bool, overrides: &[String]) -> Result<T>
where
    T: for<'de> Deserialize<'de> + Serialize + Default,
{
    let base: T = load(path, explicit)?;
    if overrides.is_empty() {
        return Ok(base);
    }
    let mut table = toml::Table::try_from(&base).context("cannot re-read the configuration")?;
    for o in overrides {
        let (key, value) = o
            .split_once('=')
            .with_context(|| format!("option {o:?} is not KEY=VALUE"))?;
        let key = key.trim();
        let value = value.trim();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        table.insert(key.to_owned(), parsed);
    }
    T::deserialize(table)
        .map_err(|e| anyhow::anyhow!("invalid command-line option: {}", e.to_string().trim_end()))
}

/// 0.1 files open with a `[Default]` section; ours never have one.
fn is_ini(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .is_some_and(|l| l.eq_ignore_ascii_case("[default]"))
}

/// Rewrite INI as TOML with the same line numbers: `key = value` becomes
/// `key = "value"`, the section header and `;` comments become TOML comments.
fn ini_to_toml(text: &str) -> Result<String> {
    let mut out = String::with_capacity(text.len() + 64);
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            out.push('\n');
        } else if t.eq_ignore_ascii_case("[default]") {
            out.push_str("# [Default]\n");
        } else if t.starts_with('[') {
            anyhow::bail!(
                "line {}: section {t} is not supported; 0.1 config files have only [Default]",
                i + 1
            );
        } else if let Some((k, v)) = t.split_once('=').or_else(|| t.split_once(':')) {
            let key = k.trim();
            let value = toml::Value::String(v.trim().to_owned());
            out.push_str(&format!("{key} = {value}\n"));
        } else {
            anyhow::bail!("line {}: expected `key = value`, found {t:?}", i + 1);
        }
    }
    Ok(out)
}

/// A list given as a TOML array or as 0.1's comma-separated string.
/// Blanks around items and empty items (a trailing comma) are dropped: 0.1
/// subscribed to `" db"` and to everything for those.
fn lenient_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        Text(String),
    }
    let items = match ListOrString::deserialize(d)? {
        ListOrString::List(l) => l,
        ListOrString::Text(s) => s.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

/// A boolean given as TOML or as an INI string (yes/no, true/false, on/off, 1/0).
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum BoolOrString {
        Bool(bool),
        Text(String),
    }
    match BoolOrString::deserialize(d)? {
        BoolOrString::Bool(b) => Ok(b),
        BoolOrString::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" | "1" => Ok(true),
            "no" | "false" | "off" | "0" => Ok(false),
            other => Err(de::Error::custom(format!(
                "expected yes or no, found {other:?}"
            ))),
        },
    }
}

/// A number given as a TOML integer or as an INI string.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrString {
        Num(u64),
        Text(String),
    }
    match NumOrString::deserialize(d)? {
        NumOrString::Num(n) => Ok(n),
        NumOrString::Text(s) => s.trim().parse().map_err(|_| {
            de::Error::custom(format!("expected a non-negative integer, found {s:?}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_is_the_default() {
        let m: ManagerConfig = parse("").unwrap();
        assert_eq!(m, ManagerConfig::default());
        let a: AgentConfig = parse("").unwrap();
        assert_eq!(a, AgentConfig::default());
        assert_eq!(a.allowed_commands, DEFAULT_ALLOWED);
    }

    #[test]
    fn the_01_ini_files_still_read() {
        let m: ManagerConfig = parse(
            "[Default]\nfrontend_endpoint = tcp://*:5500\nbackend_endpoint  = tcp://*:5601\n\
             sink_endpoint     = tcp://*:5700\nmgmt_endpoint     = tcp://*:5800\n",
        )
        .unwrap();
        assert_eq!(m.backend_endpoint, "tcp://*:5601");
        let a: AgentConfig = parse(
            "; comment\n[Default]\nmanager_endpoint  = tcp://mgr:5600\nsink_endpoint = tcp://mgr:5700\n\
             mgmt_endpoint     = tcp://*:6000\ntopics = web, db,\ncommand_timeout = 30\n",
        )
        .unwrap();
        assert_eq!(a.manager_endpoint, "tcp://mgr:5600");
        assert_eq!(a.topics, ["web", "db"]);
        assert_eq!(a.command_timeout, 30);
    }

    #[test]
    fn toml_config() {
        let a: AgentConfig = parse(
            "node = \"web1\"\ntopics = [\"web\", \" db \"]\nservice_manager = \"systemctl\"\n\
             allowed_commands = [\"status\"]\n",
        )
        .unwrap();
        assert_eq!(a.node.as_deref(), Some("web1"));
        assert_eq!(a.topics, ["web", "db"]);
        assert_eq!(a.service_manager, ServiceManagerKind::Systemctl);
        assert_eq!(a.allowed_commands, ["status"]);
        assert!(a.check().is_ok());
    }

    #[test]
    fn invalid_key_names_line_and_key() {
        let err = parse::<AgentConfig>("node = \"a\"\n\nbogus_key = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("bogus_key"), "{err}");
        let err = parse::<AgentConfig>("[Default]\nnode = a\ncommand_timeout = soon\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("soon"), "{err}");
        let err = parse::<ManagerConfig>("[Default]\njunk line\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn missing_default_file_means_defaults_but_explicit_file_must_exist() {
        let p = Path::new("/nonexistent/service-mgr-test.conf");
        let m: ManagerConfig = load(p, false).unwrap();
        assert_eq!(m, ManagerConfig::default());
        let err = load::<ManagerConfig>(p, true).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/service-mgr-test.conf"));
    }
    #[test]
    fn command_line_overrides_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.conf");
        std::fs::write(&path, "node = \"from-file\"\ncommand_timeout = 5\n").unwrap();
        let a: AgentConfig = load_with(
            &path,
            true,
            &[
                "node=cli".into(),
                "command_timeout = 7".into(),
                "topics=[\"x\", \"y\"]".into(),
            ],
        )
        .unwrap();
        assert_eq!(a.node.as_deref(), Some("cli"));
        assert_eq!(a.command_timeout, 7);
        assert_eq!(a.topics, ["x", "y"]);
        let err = load_with::<AgentConfig>(&path, true, &["nosuch=1".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("nosuch"), "{err:#}");
    }

    #[test]
    fn metrics_endpoint_is_off_or_host_port() {
        for (text, ok) in [
            ("", true),
            ("metrics_endpoint = \"127.0.0.1:9550\"", true),
            ("metrics_endpoint = \":9550\"", true),
            (
                "metrics_endpoint = \"http://127.0.0.1:9550/metrics\"",
                false,
            ),
            ("metrics_endpoint = \"9550\"", false),
        ] {
            let m: ManagerConfig = parse(text).unwrap();
            let a: AgentConfig = parse(text).unwrap();
            for got in [m.check(), a.check()] {
                match got {
                    Ok(()) => assert!(ok, "{text}"),
                    Err(e) => {
                        assert!(!ok, "{text}: {e}");
                        assert!(e.to_string().contains("metrics_endpoint"), "{e}");
                    }
                }
            }
        }
    }

    /// `allowed_commands = ["restrat"]` was accepted silently and every
    /// restart was then refused.
    #[test]
    fn unknown_commands_are_an_error_with_a_hint() {
        let cases: &[(&str, Option<&str>)] = &[
            ("allowed_commands = [\"restrat\"]", Some("allowed_commands: unknown command \"restrat\" (did you mean \"restart\"?)")),
            ("allowed_commands = [\"condrestart\"]", Some("add others this host's service manager knows to custom_commands")),
            ("allowed_commands = [\"condrestart\"]\ncustom_commands = [\"condrestart\"]", None),
            ("custom_commands = [\"a;b\"]", Some("not a plain command word")),
            ("[[policy]]\nname = \"ops\"\nkeys = [\"*\"]\ncommands = [\"stauts\"]\nservices = [\"*\"]", Some("[[policy]] \"ops\": commands: unknown command \"stauts\" (did you mean \"status\"?)")),
            ("[[policy]]\nname = \"ops\"\nkeys = [\"*\"]\ncommands = [\"re*\", \"status\"]\nservices = [\"*\"]", None),
        ];
        for (text, want) in cases {
            let a: AgentConfig = parse(text).unwrap();
            match (a.check(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{text}: {e}"),
                (got, _) => panic!("{text}: {got:?}"),
            }
        }
    }
}
