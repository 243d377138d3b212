//! Start-up of the two daemons (`service-mgrd`, `service-mgr-agentd`): their
//! command line, config with `-O` overrides, pid file, detaching, logging and
//! signals; `stop` and `status` sent to a running one. Both go through [`run`].

use crate::args::VersionFlag;
use crate::config::{self, AgentConfig, ManagerConfig};
use crate::exit::Exit;
use crate::logging::{self, LogTarget};
use crate::runtime::{self, Control, OnReady, PidFile};
use crate::{agent, manager, mgmt, protocol, transport};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a daemon command line asks for (0.1: `start`, `stop`, `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Action {
    /// Run the daemon (in the foreground unless -d).
    #[default]
    Start,
    /// Ask the running daemon at -e to shut down.
    Stop,
    /// Ask the running daemon at -e for its status.
    Status,
}

/// Options shared by the manager and the agent daemons.
#[derive(Debug, Args)]
pub struct ServerOpts {
    /// Detach and run in the background (writes the pid file).
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
    /// Debug output.
    #[arg(short = 'D', long = "debug")]
    pub debug: bool,
    /// Pid file [default with -d: /var/run/service-mgr/PROGRAM.pid; none in the foreground].
    #[arg(short = 'p', long = "pidfile", value_name = "PIDFILE")]
    pub pidfile: Option<PathBuf>,
    /// Config file, TOML or 0.1 INI [default: /etc/service-mgr/PROGRAM.conf, if it exists].
    #[arg(short = 'f', long = "file", value_name = "CONFIG")]
    pub config: Option<PathBuf>,
    /// Log file [default: stderr; with -d: /var/log/service-mgr/PROGRAM.log].
    #[arg(short = 'o', long = "output", value_name = "LOGFILE")]
    pub logfile: Option<PathBuf>,
    /// Management endpoint to send `stop`/`status` to [default: from the config, on localhost].
    #[arg(short = 'e', long = "endpoint", value_name = "ENDPOINT")]
    pub endpoint: Option<String>,
    /// Override a config key (repeatable), e.g. -O frontend_endpoint=tcp://127.0.0.1:5500.
    #[arg(short = 'O', long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// stop: the client key that signs the shutdown [default: as the client's].
    #[arg(short = 'k', long = "key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Once every socket is bound, write the bound endpoints as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// start (default), stop or status.
    #[arg(value_enum, default_value_t = Action::Start)]
    pub action: Action,
    #[command(flatten)]
    pub version: VersionFlag,
}

/// The manager's command line (`service-mgrd`, `service-mgr daemon`).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub opts: ServerOpts,
}

/// The agent's command line (`service-mgr-agentd`, `service-mgr agent`).
#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub opts: ServerOpts,
    /// This node's name (config `node`) [default: the host name].
    #[arg(short = 'n', long, value_name = "NAME")]
    pub node: Option<String>,
    /// Extra topics, comma-separated (config `topics`).
    #[arg(long, value_name = "LIST")]
    pub topics: Option<String>,
    /// Load testing: host N simulated agents in this process, each with its own
    /// connections and the real protocol, answering from a built-in fake service manager.
    #[arg(long, value_name = "N")]
    pub simulate: Option<usize>,
    /// Node names of simulated agents: PREFIX0001, PREFIX0002, ...
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "sim-",
        requires = "simulate"
    )]
    pub node_prefix: String,
}

/// Which daemon to run, with its command line.
#[derive(Debug)]
pub enum Daemon {
    Manager(DaemonArgs),
    Agent(AgentArgs),
}

/// Start, stop or ask the status of a daemon.
pub fn run(daemon: Daemon) -> Result<Exit> {
    match daemon {
        Daemon::Manager(a) => serve(
            &MANAGER_ROLE,
            &a.opts,
            &[],
            |cfg: &ManagerConfig| MgmtOf {
                endpoint: cfg.mgmt_endpoint.clone(),
                key_file: cfg.key_file(),
                plaintext: cfg.allow_unsigned,
            },
            |cfg, control, log, ready| manager::run(cfg, control, log, ready),
        ),
        Daemon::Agent(a) => {
            let mut extra = Vec::new();
            if let Some(n) = a.node {
                extra.push(format!("node={}", toml::Value::String(n)));
            }
            if let Some(t) = a.topics {
                extra.push(format!("topics={}", toml::Value::String(t)));
            }
            let simulate = a.simulate;
            let prefix = a.node_prefix;
            if simulate.is_none() {
                runtime::one_malloc_arena();
            }
            serve(
                &AGENT_ROLE,
                &a.opts,
                &extra,
                |cfg: &AgentConfig| MgmtOf {
                    endpoint: cfg.mgmt_endpoint.clone(),
                    key_file: cfg.key_file(),
                    plaintext: cfg.allow_unsigned,
                },
                |cfg, control, log, ready| match simulate {
                    Some(n) => agent::simulate::run(cfg, n, &prefix, control, log, ready),
                    None => agent::run(cfg, control, log, ready),
                },
            )
        }
    }
}

/// Where a daemon's management socket is and how it is secured, from its config.
struct MgmtOf {
    endpoint: String,
    /// The daemon's own key: its public half is the socket's CURVE key.
    key_file: PathBuf,
    /// allow_unsigned: the socket speaks plaintext, as 0.1's did.
    plaintext: bool,
}

/// The role-specific parts of starting a daemon.
struct Role {
    program: &'static str,
    config: &'static str,
    status_cmd: &'static str,
    stop_cmd: &'static str,
    /// The management port's distance from the base port (config::port).
    mgmt_port: u16,
    /// Open files below which the log warns: each peer connection is one.
    open_files: u64,
}

const MANAGER_ROLE: Role = Role {
    program: "service-mgrd",
    config: config::MANAGER_CONFIG,
    status_cmd: protocol::MANAGER_STATUS,
    stop_cmd: protocol::MANAGER_SHUTDOWN,
    mgmt_port: config::port::MGMT,
    // Two connections per agent, one per client, with room to spare.
    open_files: 8192,
};

const AGENT_ROLE: Role = Role {
    program: "service-mgr-agentd",
    config: config::AGENT_CONFIG,
    status_cmd: protocol::AGENT_STATUS,
    stop_cmd: protocol::AGENT_SHUTDOWN,
    mgmt_port: config::port::AGENT_MGMT,
    open_files: 1024,
};

/// `start`, `stop` or `status` for either daemon: config, pid file, detaching,
/// logging and signals, in the order that reports errors on the terminal.
fn serve<C>(
    role: &Role,
    o: &ServerOpts,
    extra_overrides: &[String],
    mgmt_of: impl Fn(&C) -> MgmtOf,
    body: impl FnOnce(&C, &Control, &slog::Logger, OnReady) -> Result<()>,
) -> Result<Exit>
where
    C: for<'de> serde::Deserialize<'de> + serde::Serialize + Default + config::Check,
{
    let (path, explicit) = match &o.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(role.config), false),
    };
    let mut overrides = o.set.clone();
    overrides.extend_from_slice(extra_overrides);
    let cfg: C = config::load_with(&path, explicit, &overrides)?;
    if o.action != Action::Start {
        let of = mgmt_of(&cfg);
        let endpoint = match &o.endpoint {
            Some(e) => e.clone(),
            None => local_endpoint(
                &of.endpoint,
                &config::default_endpoint("localhost", role.mgmt_port),
            ),
        };
        let cmd = if o.action == Action::Stop {
            role.stop_cmd
        } else {
            role.status_cmd
        };
        let key = config::load_client_key(o.key.as_deref())?;
        let wire = mgmt::wire(
            mgmt::Daemon::of(cmd),
            &endpoint,
            of.plaintext
                .then(|| config::pin::PLAINTEXT.to_owned())
                .or_else(|| std::env::var("SERVICE_MGR_SERVER_KEY").ok())
                .as_deref(),
            &of.key_file,
            key.as_deref(),
        )?;
        let ok = mgmt::run_and_print(
            &endpoint,
            &wire,
            cmd,
            Duration::from_millis(1000),
            3,
            key.as_deref(),
        )?;
        return Ok(if ok { Exit::Ok } else { Exit::Error });
    }
    cfg.check()
        .with_context(|| format!("invalid configuration (from {} and -O)", path.display()))?;
    // Absolute before detaching changes the directory to /: the pid file is
    // removed and the log reopened where the user meant.
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let logfile = o.logfile.as_deref().map(absolute).or_else(|| {
        o.daemon
            .then(|| PathBuf::from(format!("/var/log/service-mgr/{}.log", role.program)))
    });
    let target = match &logfile {
        Some(p) => LogTarget::file(p)?,
        None => LogTarget::stderr(),
    };
    let pidfile = o.pidfile.as_deref().map(absolute).or_else(|| {
        o.daemon
            .then(|| PathBuf::from(format!("/var/run/service-mgr/{}.pid", role.program)))
    });
    // Locked before detaching, so "already running" reaches the terminal.
    let mut pid = pidfile
        .as_deref()
        .map(|p| PidFile::acquire(p, role.program))
        .transpose()?;
    let detached = match o.daemon {
        true => Some(runtime::detach(role.program, logfile.as_deref())?),
        false => None,
    };
    let detached = std::cell::RefCell::new(detached);
    if let Some(p) = pid.as_mut() {
        p.update()?;
    }
    let log = logging::root(target.clone(), role.program, o.debug);
    raise_open_files(role, &log);
    let control = Control::new()?;
    control.install_signals()?;
    let reopen_target = target.clone();
    control.on_reopen(move || reopen_target.reopen());
    let ready_file = o.ready_file.as_deref().map(absolute);
    let mut on_ready = |doc: &serde_json::Value| -> Result<()> {
        if let Some(path) = &ready_file {
            runtime::write_ready_file(path, doc)?;
        }
        if let Some(d) = detached.borrow_mut().as_mut() {
            d.ready();
        }
        runtime::release_freed_memory();
        Ok(())
    };
    let result = body(&cfg, &control, &log, &mut on_ready);
    if let Err(e) = &result {
        slog::error!(log, "{e:#}");
        if let Some(d) = detached.borrow_mut().as_mut() {
            d.failed(&format!("{e:#}"));
        }
    }
    drop(pid);
    result.map(|_| Exit::Ok)
}

/// Raise the soft limit of open files to the hard limit: at a soft limit of
/// 1024, 1,100 idle TCP connects from anyone locked every client out.
fn raise_open_files(role: &Role, log: &slog::Logger) {
    match runtime::raise_nofile_limit() {
        Ok(limit) if limit < role.open_files => slog::warn!(log,
            "the open files limit is low: each connection takes one, and at the limit new ones \
             (real clients and agents too) wait; raise the hard limit (LimitNOFILE= in the \
             systemd unit, ulimit -Hn)";
            "limit" => limit, "wanted" => role.open_files),
        Ok(limit) => {
            slog::debug!(log, "open files limit raised to the hard limit"; "limit" => limit)
        }
        Err(e) => {
            slog::warn!(log, "cannot raise the open files limit"; "error" => format!("{e:#}"))
        }
    }
}

/// A bind endpoint (`tcp://*:5800`) as something to connect to (`tcp://localhost:5800`).
fn local_endpoint(bind: &str, fallback: &str) -> String {
    match transport::endpoint_host(bind) {
        Some("*") | Some("0.0.0.0") => {
            bind.replacen("*", "localhost", 1)
                .replacen("0.0.0.0", "localhost", 1)
        }
        Some(_) => bind.to_owned(),
        None => fallback.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_endpoint_turns_wildcards_into_localhost() {
        assert_eq!(
            local_endpoint("tcp://*:5800", "tcp://localhost:5800"),
            "tcp://localhost:5800"
        );
        assert_eq!(
            local_endpoint("tcp://10.0.0.1:5800", "tcp://localhost:5800"),
            "tcp://10.0.0.1:5800"
        );
        assert_eq!(
            local_endpoint("ipc:///x", "tcp://localhost:6000"),
            "tcp://localhost:6000"
        );
    }
}
