//! The command line: one multicall executable. Called as `service-mgrd`,
//! `service-mgr-agentd` or `service-mgr-client` (links, busybox style) it is
//! that program with its 0.1 options; called as `service-mgr` it takes a
//! subcommand (`daemon`, `agent`, `client`, `mgmt`, `demo`, ...). Each role
//! owns its arguments; this module composes them, parses and dispatches.

use crate::args::VersionFlag;
use crate::client::ClientArgs;
use crate::daemon::{self, AgentArgs, Daemon, DaemonArgs};
use crate::demo::DemoArgs;
use crate::exit::Exit;
use crate::mgmt::{KeygenArgs, MgmtArgs};
use crate::{client, completion, demo, mgmt, runtime};
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

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
}

/// Parse the command line, run it and map the outcome to an exit code.
pub fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The completion scripts ask for the targets of -T and -N this way.
    if let (Some(what), Some("--")) = (
        std::env::var_os(completion::ENV),
        args.get(1).and_then(|a| a.to_str()),
    ) {
        let words: Vec<String> = args[2..]
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        if let Some(code) = completion::main(&what, &words) {
            return code;
        }
    }
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
        // A short-lived tool: libzmq's threads need no malloc arenas of their
        // own (each is a 64 MiB mapping set up and grown by syscalls at start).
        runtime::one_malloc_arena();
    }
    match run(applet) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            if e.is::<crate::exit::UsageError>() {
                Exit::Usage.into()
            } else {
                Exit::Error.into()
            }
        }
    }
}

fn run(applet: Applet) -> Result<Exit> {
    match applet {
        Applet::Serviced(a) => daemon::run(Daemon::Manager(a)),
        Applet::Agentd(a) => daemon::run(Daemon::Agent(a)),
        Applet::ServiceClient(a) => client::run(&a, true),
        Applet::ServiceMgr(root) => match (root.command, root.install_links) {
            (_, Some(dir)) | (Some(Command::InstallLinks { dir }), _) => {
                runtime::install_links(&dir, &LINK_NAMES).map(|_| Exit::Ok)
            }
            (Some(Command::Daemon(a)), _) => daemon::run(Daemon::Manager(a)),
            (Some(Command::Agent(a)), _) => daemon::run(Daemon::Agent(a)),
            (Some(Command::Client(a)), _) => client::run(&a, false),
            (Some(Command::Mgmt(a)), _) => mgmt::run(&a),
            (Some(Command::Keygen(a)), _) => mgmt::keygen(&a),
            (Some(Command::Demo(a)), _) => demo::run(&a),
            (None, None) => Ok(Exit::Usage),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::Action;
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
        assert_eq!((c.wait, c.retries, c.timeout), (Some(5.0), None, None));
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
}
