//! The command line: one multicall executable. Called as `service-mgrd`,
//! `service-mgr-agentd` or `service-mgr-client` (links, busybox style) it is
//! that program with its 0.1 options; called as `service-mgr` it takes a
//! subcommand (`daemon`, `agent`, `client`, `mgmt`, `demo`, ...).

use crate::config::{self, AgentConfig, ManagerConfig};
use crate::exit::Exit;
use crate::logging::{self, LogTarget};
use crate::runtime::{self, Control, OnReady, PidFile};
use crate::{agent, client, demo, manager, mgmt, transport};
use anyhow::{Context, Result};
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Names the executable answers to; anything else is a renamed binary.
pub const LINK_NAMES: [&str; 3] = ["service-mgrd", "service-mgr-agentd", "service-mgr-client"];
pub const MAIN_NAME: &str = "service-mgr";

#[derive(Debug, Parser)]
#[command(multicall = true)]
pub enum Applet {
    /// Asynchronous service(8) manager for UNIX/Linux clusters.
    #[command(name = "service-mgr", version, disable_version_flag = true)]
    ServiceMgr(Root),
    /// The service manager daemon: routes requests from clients to agents.
    #[command(name = "service-mgrd", version, disable_version_flag = true)]
    Serviced(DaemonArgs),
    /// The service manager agent: runs service requests on this node.
    #[command(name = "service-mgr-agentd", version, disable_version_flag = true)]
    Agentd(AgentArgs),
    /// Send a service request to the agents of a topic and print their results.
    #[command(name = "service-mgr-client", version, disable_version_flag = true)]
    ServiceClient(ClientArgs),
}

#[derive(Debug, Args)]
#[command(arg_required_else_help = true)]
pub struct Root {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Create the link names (service-mgrd, service-mgr-agentd, service-mgr-client) in DIR.
    #[arg(long, value_name = "DIR", exclusive = true)]
    pub install_links: Option<PathBuf>,
    #[command(flatten)]
    pub version: VersionFlag,
}

/// `-v`/`-V`/`--version` on every name (0.1 used `-v`).
#[derive(Debug, Args)]
pub struct VersionFlag {
    /// Print version and exit.
    #[arg(short = 'v', long = "version", short_alias = 'V', action = ArgAction::Version)]
    version: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run or control the manager daemon (as service-mgrd).
    #[command(version, disable_version_flag = true)]
    Daemon(DaemonArgs),
    /// Run or control an agent (as service-mgr-agentd).
    #[command(version, disable_version_flag = true)]
    Agent(AgentArgs),
    /// Send a service request (as service-mgr-client).
    #[command(version, disable_version_flag = true)]
    Client(ClientArgs),
    /// Send a management command to a manager or an agent.
    #[command(version, disable_version_flag = true)]
    Mgmt(MgmtArgs),
    /// Start a manager and an agent on loopback, ask for one service's status, print it, stop.
    #[command(version, disable_version_flag = true)]
    Demo(DemoArgs),
    /// Create the link names in DIR (same as --install-links).
    InstallLinks {
        /// Directory to create the links in.
        dir: PathBuf,
    },
    /// Make a key pair for a client, an agent or a manager.
    #[command(version, disable_version_flag = true)]
    Keygen(KeygenArgs),
    /// Measure latency, throughput and memory with a simulated fleet (see BENCHMARKS.md).
    #[command(version, disable_version_flag = true)]
    Bench(crate::bench::BenchArgs),
    /// Write man pages and shell completions generated from these definitions.
    #[command(hide = true)]
    Generate {
        /// man or completions
        what: String,
        /// Output directory.
        dir: PathBuf,
    },
}

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

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub opts: ServerOpts,
}

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

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Seconds to wait for results at most [default: 60 when the manager says which nodes
    /// will answer (the client returns as soon as they all did); 0.1 against a 0.1 manager].
    #[arg(short = 'w', long = "wait", value_name = "WAIT")]
    pub wait: Option<f64>,
    /// Tries to reach the manager.
    #[arg(
        short = 'r',
        long = "retries",
        value_name = "RETRIES",
        default_value_t = 3
    )]
    pub retries: u32,
    /// Milliseconds to wait for the manager's answer per try.
    #[arg(
        short = 't',
        long = "timeout",
        value_name = "TIMEOUT",
        default_value_t = 1000
    )]
    pub timeout: u64,
    /// Debug output on stderr.
    #[arg(short = 'D', long = "debug")]
    pub debug: bool,
    /// The manager's frontend endpoint.
    #[arg(
        short = 'e',
        long = "endpoint",
        value_name = "ENDPOINT",
        default_value = "tcp://localhost:5500"
    )]
    pub endpoint: String,
    /// Who runs it: `any`, an OS name (`Linux`, `FreeBSD`), a node name or a custom topic
    /// [default with -N or -G: any].
    #[arg(short = 'T', long = "topic", value_name = "TOPIC", allow_hyphen_values = true,
          required_unless_present_any = ["nodes", "glob", "job"])]
    pub topic: Option<String>,
    /// Only these nodes (comma-separated), combined with -T.
    #[arg(
        short = 'N',
        long = "nodes",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub nodes: Option<Vec<String>>,
    /// Only registered nodes whose name matches this glob (e.g. 'web*'), combined with -T and -N.
    #[arg(short = 'G', long = "glob", value_name = "PATTERN")]
    pub glob: Option<String>,
    /// The service command: start, stop, restart, reload or status.
    #[arg(
        short = 'c',
        long = "cmd",
        value_name = "CMD",
        allow_hyphen_values = true,
        required_unless_present = "job"
    )]
    pub cmd: Option<String>,
    /// The service's name.
    #[arg(
        short = 's',
        long = "service",
        value_name = "SERVICE",
        allow_hyphen_values = true,
        required_unless_present = "job"
    )]
    pub service: Option<String>,
    /// Run on at most N nodes at a time (N or N%): a rolling restart.
    #[arg(long, value_name = "N|N%")]
    pub batch: Option<String>,
    /// Seconds to pause between batches.
    #[arg(long, value_name = "SECS", default_value_t = 0.0, requires = "batch")]
    pub batch_wait: f64,
    /// Stop the rollout after the first batch in which a node did not succeed.
    #[arg(long, requires = "batch")]
    pub fail_fast: bool,
    /// Show an earlier job by its id (its results so far, then any still to come).
    #[arg(long, value_name = "ID", conflicts_with_all = ["topic", "nodes", "glob", "cmd", "service", "batch"])]
    pub job: Option<String>,
    /// The client key that signs requests [default: $SERVICE_MGR_KEY, else
    /// ~/.config/service-mgr/client.key if it exists; without a key requests go unsigned].
    #[arg(short = 'k', long = "key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Output format [default: table on a terminal; when piped, legacy as
    /// service-mgr-client (0.1's output) and json as service-mgr client].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub version: VersionFlag,
}

/// How the client prints what came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: node, system, status, return code, time, first line of output; a summary.
    Table,
    /// One JSON document: job, request, expected nodes, summary, every node's result.
    Json,
    /// One JSON object per line, each result as it arrives, then a summary line.
    Jsonl,
    /// 0.1's output: a JSON array of the results (plus entries for silent nodes).
    Legacy,
}

#[derive(Debug, Args)]
pub struct MgmtArgs {
    /// Management endpoint of a manager (port 5800) or an agent (port 6000).
    #[arg(
        short = 'e',
        long = "endpoint",
        value_name = "ENDPOINT",
        default_value = "tcp://localhost:5800"
    )]
    pub endpoint: String,
    /// Milliseconds to wait for the answer per try.
    #[arg(short = 't', long = "timeout", default_value_t = 1000)]
    pub timeout: u64,
    /// Tries.
    #[arg(short = 'r', long = "retries", default_value_t = 3)]
    pub retries: u32,
    /// manager.status, manager.shutdown, manager.agents, manager.jobs, manager.job,
    /// agent.status, agent.shutdown; short forms: status, agents, jobs, job ID;
    /// and `keys list|accept|reject|delete|import ...` (local, on the manager's host).
    pub command: String,
    /// Arguments of the command (job ID; keys: a fingerprint, key id, name or file).
    pub args: Vec<String>,
    /// Client key to sign commands that change something (shutdown) [default: as the client's].
    #[arg(short = 'k', long = "key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// keys: the manager's key store [default: keys in the manager's state_dir].
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
    /// keys: the manager's config file, to find its state_dir.
    #[arg(short = 'f', long = "file", value_name = "CONFIG")]
    pub config: Option<PathBuf>,
    /// Output format [default for the short names: table on a terminal, else json;
    /// full command names print the JSON reply, as 0.1 did].
    #[arg(long, value_enum)]
    pub format: Option<MgmtFormat>,
    #[command(flatten)]
    pub version: VersionFlag,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Whose key: client (signs requests), agent (one per node), manager.
    #[arg(long, value_parser = ["client", "agent", "manager"], default_value = "client")]
    pub role: String,
    /// The key's name: for an agent its node name [default: user@host for a client, the host name otherwise].
    #[arg(long)]
    pub name: Option<String>,
    /// Secret key file (mode 0600); the public key goes to FILE.pub
    /// [default: client.key or agent.key in ~/.config/service-mgr or /etc/service-mgr].
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace an existing key file.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub version: VersionFlag,
}

/// How `mgmt` prints the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MgmtFormat {
    /// A table for people.
    Table,
    /// The reply as JSON, as 0.1 printed it.
    Json,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The service to ask about [default: the first of ssh, sshd, cron, crond, dbus that this host has].
    #[arg(short = 's', long = "service")]
    pub service: Option<String>,
    /// The command to send (status is harmless; the demo refuses anything else unless --any-command).
    #[arg(short = 'c', long = "cmd", default_value = "status")]
    pub cmd: String,
    /// Debug output of the demo's manager and agent on stderr.
    #[arg(short = 'D', long = "debug")]
    pub debug: bool,
    #[command(flatten)]
    pub version: VersionFlag,
}

/// Parse the command line, run it and map the outcome to an exit code.
pub fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let name = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .unwrap_or(a.as_os_str())
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    if name != MAIN_NAME && !LINK_NAMES.contains(&name.as_str()) {
        eprintln!(
            "service-mgr: error: cannot tell what to run from the program name {name:?}; \
             run it as 'service-mgr <daemon|agent|client|mgmt|demo> ...' or through a link named {}",
            LINK_NAMES.join(", ")
        );
        return Exit::Usage.into();
    }
    let applet = match Applet::try_parse_from(&args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            }
            .into();
        }
    };
    // Commands that print (client, mgmt, keygen) should end quietly when their
    // reader goes away (`| head`), as other UNIX tools do; daemons keep
    // ignoring SIGPIPE.
    if !matches!(&applet, Applet::Serviced(_) | Applet::Agentd(_))
        && !matches!(
            &applet,
            Applet::ServiceMgr(Root {
                command: Some(Command::Daemon(_) | Command::Agent(_) | Command::Demo(_)),
                ..
            })
        )
    {
        // SAFETY: restoring the default disposition of one signal, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(applet) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            Exit::Error.into()
        }
    }
}

fn run(applet: Applet) -> Result<Exit> {
    match applet {
        Applet::Serviced(a) => run_manager(a),
        Applet::Agentd(a) => run_agent(a),
        Applet::ServiceClient(a) => run_client(a, true),
        Applet::ServiceMgr(root) => match (root.command, root.install_links) {
            (_, Some(dir)) | (Some(Command::InstallLinks { dir }), _) => install_links(&dir),
            (Some(Command::Daemon(a)), _) => run_manager(a),
            (Some(Command::Agent(a)), _) => run_agent(a),
            (Some(Command::Client(a)), _) => run_client(a, false),
            (Some(Command::Mgmt(a)), _) => mgmt::run(&a),
            (Some(Command::Keygen(a)), _) => mgmt::keygen(&a),
            (Some(Command::Demo(a)), _) => demo::run(&a),
            (Some(Command::Bench(a)), _) => crate::bench::run(&a),
            (Some(Command::Generate { what, dir }), _) => {
                crate::docs::generate(&what, &dir).map(|_| Exit::Ok)
            }
            (None, None) => Ok(Exit::Usage),
        },
    }
}

/// The role-specific parts of starting a daemon.
struct Role {
    program: &'static str,
    config: &'static str,
    status_cmd: &'static str,
    stop_cmd: &'static str,
    default_mgmt_port: &'static str,
}

const MANAGER_ROLE: Role = Role {
    program: "service-mgrd",
    config: config::MANAGER_CONFIG,
    status_cmd: crate::protocol::MANAGER_STATUS,
    stop_cmd: crate::protocol::MANAGER_SHUTDOWN,
    default_mgmt_port: "5800",
};

const AGENT_ROLE: Role = Role {
    program: "service-mgr-agentd",
    config: config::AGENT_CONFIG,
    status_cmd: crate::protocol::AGENT_STATUS,
    stop_cmd: crate::protocol::AGENT_SHUTDOWN,
    default_mgmt_port: "6000",
};

fn run_manager(a: DaemonArgs) -> Result<Exit> {
    serve(
        &MANAGER_ROLE,
        &a.opts,
        &[],
        |cfg: &ManagerConfig| cfg.mgmt_endpoint.clone(),
        |cfg, control, log, ready| manager::run(cfg, control, log, ready),
    )
}

fn run_agent(a: AgentArgs) -> Result<Exit> {
    let mut extra = Vec::new();
    if let Some(n) = a.node {
        extra.push(format!("node={}", toml::Value::String(n)));
    }
    if let Some(t) = a.topics {
        extra.push(format!("topics={}", toml::Value::String(t)));
    }
    let simulate = a.simulate;
    let prefix = a.node_prefix;
    serve(
        &AGENT_ROLE,
        &a.opts,
        &extra,
        |cfg: &AgentConfig| cfg.mgmt_endpoint.clone(),
        |cfg, control, log, ready| match simulate {
            Some(n) => agent::simulate::run(cfg, n, &prefix, control, log, ready),
            None => agent::run(cfg, control, log, ready),
        },
    )
}

/// `start`, `stop` or `status` for either daemon: config, pid file, detaching,
/// logging and signals, in the order that reports errors on the terminal.
fn serve<C>(
    role: &Role,
    o: &ServerOpts,
    extra_overrides: &[String],
    mgmt_endpoint: impl Fn(&C) -> String,
    body: impl FnOnce(&C, &Control, &slog::Logger, OnReady) -> Result<()>,
) -> Result<Exit>
where
    C: for<'de> serde::Deserialize<'de> + serde::Serialize + Default,
{
    let (path, explicit) = match &o.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(role.config), false),
    };
    let mut overrides = o.set.clone();
    overrides.extend_from_slice(extra_overrides);
    let cfg: C = config::load_with(&path, explicit, &overrides)?;
    if o.action != Action::Start {
        let endpoint = match &o.endpoint {
            Some(e) => e.clone(),
            None => local_endpoint(&mgmt_endpoint(&cfg), role.default_mgmt_port),
        };
        let cmd = if o.action == Action::Stop {
            role.stop_cmd
        } else {
            role.status_cmd
        };
        let key = client::load_key(o.key.as_deref())?;
        let ok = mgmt::run_and_print(
            &endpoint,
            cmd,
            Duration::from_millis(1000),
            3,
            key.as_deref(),
        )?;
        return Ok(if ok { Exit::Ok } else { Exit::Error });
    }
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

/// A bind endpoint (`tcp://*:5800`) as something to connect to (`tcp://localhost:5800`).
fn local_endpoint(bind: &str, default_port: &str) -> String {
    match transport::endpoint_host(bind) {
        Some("*") | Some("0.0.0.0") => {
            bind.replacen("*", "localhost", 1)
                .replacen("0.0.0.0", "localhost", 1)
        }
        Some(_) => bind.to_owned(),
        None => format!("tcp://localhost:{default_port}"),
    }
}

fn run_client(a: ClientArgs, legacy_name: bool) -> Result<Exit> {
    let log = if a.debug {
        logging::root(LogTarget::stderr(), "service-mgr-client", true)
    } else {
        logging::discard()
    };
    client::run(&a, legacy_name, &log)
}

/// Create the link names next to each other in `dir`, pointing at this executable.
fn install_links(dir: &Path) -> Result<Exit> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in LINK_NAMES {
        let link = dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&link)?,
            Ok(_) => anyhow::bail!(
                "{} exists and is not a link; remove it first",
                link.display()
            ),
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&exe, &link)
            .with_context(|| format!("cannot create link {}", link.display()))?;
        println!("{} -> {}", link.display(), exe.display());
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Applet::command().debug_assert();
    }

    #[test]
    fn the_01_command_lines_parse() {
        let a = Applet::try_parse_from([
            "service-mgrd",
            "-d",
            "-D",
            "-p",
            "/tmp/p",
            "-f",
            "/tmp/c",
            "-o",
            "/tmp/l",
            "start",
        ])
        .unwrap();
        let Applet::Serviced(d) = a else { panic!() };
        assert!(d.opts.daemon && d.opts.debug);
        assert_eq!(d.opts.action, Action::Start);
        let Applet::Serviced(d) =
            Applet::try_parse_from(["service-mgrd", "-e", "tcp://h:5800", "stop"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(d.opts.action, Action::Stop);
        let Applet::ServiceClient(c) = Applet::try_parse_from([
            "service-mgr-client",
            "-w",
            "5",
            "-e",
            "tcp://localhost:5500",
            "-T",
            "FreeBSD",
            "-c",
            "status",
            "-s",
            "sshd",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!((c.wait, c.retries, c.timeout), (Some(5.0), 3, 1000));
        assert!(Applet::try_parse_from([
            "service-mgr",
            "client",
            "-T",
            "any",
            "-c",
            "status",
            "-s",
            "x"
        ])
        .is_ok());
    }

    #[test]
    fn local_endpoint_turns_wildcards_into_localhost() {
        assert_eq!(
            local_endpoint("tcp://*:5800", "5800"),
            "tcp://localhost:5800"
        );
        assert_eq!(
            local_endpoint("tcp://10.0.0.1:5800", "5800"),
            "tcp://10.0.0.1:5800"
        );
        assert_eq!(local_endpoint("ipc:///x", "6000"), "tcp://localhost:6000");
    }
}
