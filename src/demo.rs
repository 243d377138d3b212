//! `service-mgr demo`: the whole system on one machine with built-in defaults.
//! A manager and an agent start on loopback ports, a real request goes through
//! the real sockets to this host's real service manager, the result is printed
//! and both stop again. No root, no config file.

use crate::args::VersionFlag;
use crate::client;
use crate::config::{AgentConfig, ManagerConfig, PolicyRule};
use crate::exit::Exit;
use crate::logging;
use crate::output;
use crate::runtime::{self, Control, ControlHandle, OnReady};
use crate::security::{self, KeyPair, KeyStore, Role};
use crate::{agent, host::HostInfo, manager, mgmt};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// `service-mgr demo`'s command line.
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

/// Services that most hosts have, tried in order when `-s` is not given.
const CANDIDATES: [&str; 6] = ["ssh", "sshd", "cron", "crond", "dbus", "rsyslog"];

pub fn run(args: &DemoArgs) -> Result<Exit> {
    let service = match &args.service {
        Some(s) => s.clone(),
        None => {
            let (picked, why) = pick_service();
            eprintln!("demo: asking about {picked}: {why} (-s NAME asks about another)");
            picked
        }
    };
    let log = logging::debug_or_quiet(args.debug, "demo");
    let dir = std::env::temp_dir().join(format!("service-mgr-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let outcome = run_in(&dir, &service, args, &log);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// Throwaway keys, so the demo runs secure like a fresh install: a client key
/// the manager accepted and the agent authorizes, an agent key the manager accepted.
fn throwaway_keys(dir: &Path, node: &str) -> Result<std::sync::Arc<KeyPair>> {
    let client_file = dir.join("client.key");
    security::keygen(&client_file, Role::Client, "demo", false)?;
    let agent_pub = security::keygen(&dir.join("agent.key"), Role::Agent, node, false)?;
    let client = KeyPair::load(&client_file)?;
    let accepted = dir.join("accepted.pub");
    std::fs::write(&accepted, format!("{}\n{agent_pub}\n", client.public()))?;
    KeyStore::open(&dir.join("state/keys"))?.import_accepted(&accepted)?;
    Ok(std::sync::Arc::new(client))
}

fn run_in(dir: &Path, service: &str, args: &DemoArgs, log: &slog::Logger) -> Result<Exit> {
    let node = HostInfo::read().node;
    let client_key = throwaway_keys(dir, &node)?;
    let loopback = "tcp://127.0.0.1:*".to_owned();
    let mcfg = ManagerConfig {
        frontend_endpoint: loopback.clone(),
        backend_endpoint: loopback.clone(),
        sink_endpoint: loopback.clone(),
        mgmt_endpoint: loopback.clone(),
        state_dir: Some(dir.join("state")),
        ..ManagerConfig::default()
    };
    let mready = dir.join("manager.json");
    let (mstop, mthread) = spawn(&mready, log, move |c, l, r| manager::run(&mcfg, c, l, r))?;
    let m = wait_ready(&mready, &mthread)?;
    let ep = |k: &str| m[k].as_str().unwrap_or_default().to_owned();

    let acfg = AgentConfig {
        manager_endpoint: ep("backend_endpoint"),
        sink_endpoint: ep("sink_endpoint"),
        mgmt_endpoint: loopback,
        manager_key: Some(dir.join("state/manager.key.pub").display().to_string()),
        node: Some(node.clone()),
        key_file: Some(dir.join("agent.key")),
        authorized_clients: Some(dir.join("client.key.pub")),
        // The demo's client may ask what the demo allows (-c, status by default).
        policy: vec![PolicyRule {
            name: "demo".into(),
            keys: vec![client_key.public().to_string()],
            commands: vec![args.cmd.clone()],
            services: vec!["*".into()],
            deny: Vec::new(),
        }],
        ..AgentConfig::default()
    };
    let aready = dir.join("agent.json");
    let (astop, athread) = spawn(&aready, log, move |c, l, r| agent::run(&acfg, c, l, r))?;
    let result = (|| {
        wait_ready(&aready, &athread)?;
        // The demo reads its manager's management socket as the manager itself.
        let own = KeyPair::load(&dir.join("state/manager.key"))?;
        let manager: crate::security::PublicKey = own.public().clone();
        wait_registered(
            &ep("mgmt_endpoint"),
            &crate::transport::Wire::curve(&own, &manager),
            &node,
        )?;
        eprintln!(
            "demo: manager at {}, agent {node:?}; asking for `{} {service}` ...",
            ep("frontend_endpoint"),
            args.cmd
        );
        // The manager's key, as it wrote it: the demo's client pins it.
        let manager: crate::security::PublicKey = m["manager_key"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .context("the demo manager did not say its key")?;
        let req = client::Request {
            endpoint: ep("frontend_endpoint"),
            preferred: Default::default(),
            request: crate::protocol::ServiceRequest::new(&args.cmd, service, &node),
            wait: Some(Duration::from_secs(30)),
            retries: 3,
            timeout: Duration::from_secs(1),
            expect: Some(vec![node.clone()]),
            wire: crate::transport::Wire::curve(&client_key, &manager),
            key: Some(client_key.clone()),
        };
        let ctx = zmq::Context::new();
        client::collect(&ctx, &req, log, None)
    })();
    astop.shutdown();
    mstop.shutdown();
    let _ = athread.join();
    let _ = mthread.join();
    let got = result?;
    if got.results.is_empty() {
        bail!("the agent did not answer within 30 s");
    }
    // A table for a person, the results as JSON for a pipe (as the client does).
    let request = crate::protocol::ServiceRequest::new(&args.cmd, service, &node);
    let report = client::report(&request, std::slice::from_ref(&got), &[], got.elapsed);
    if std::io::stdout().is_terminal() {
        print!("{}", output::client_table(&report, output::Style::stdout()));
    } else {
        println!("{}", output::to_json_pretty(&got.results));
    }
    eprintln!(
        "demo: {} answered in {} ms (job {})",
        node,
        got.elapsed.as_millis(),
        got.uuid
    );
    // What the service said is the host's business: the demo worked if the
    // round trip did. Say so, so that a stopped service does not read as a failure.
    if let Some(rc) = report
        .results
        .first()
        .and_then(|r| r.returncode)
        .filter(|rc| *rc != 0)
    {
        eprintln!(
            "demo: the round trip worked; `{} {service}` itself exited {rc}{}",
            args.cmd,
            if args.cmd == "status" {
                " (for status: the service is stopped or not installed here)"
            } else {
                ""
            }
        );
    }
    Ok(Exit::Ok)
}

/// Run a daemon on a thread of its own; it writes its ready file to `ready`.
fn spawn(
    ready: &Path,
    log: &slog::Logger,
    daemon: impl FnOnce(&Control, &slog::Logger, OnReady) -> Result<()> + Send + 'static,
) -> Result<(ControlHandle, thread::JoinHandle<Result<()>>)> {
    let control = Control::new()?;
    let stop = control.handle();
    let log = log.clone();
    let path = ready.to_owned();
    let thread = thread::spawn(move || {
        daemon(&control, &log, &mut |doc| {
            runtime::write_ready_file(&path, doc)
        })
    });
    Ok((stop, thread))
}

/// The service to ask about, and why that one.
fn pick_service() -> (String, String) {
    let dirs = [
        "/etc/init.d",
        "/etc/rc.d",
        "/usr/local/etc/rc.d",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ];
    let found = CANDIDATES.iter().find_map(|name| {
        dirs.iter().find_map(|d| {
            let p = PathBuf::from(d);
            [p.join(name), p.join(format!("{name}.service"))]
                .into_iter()
                .find(|f| f.exists())
                .map(|f| (name.to_string(), f))
        })
    });
    let list = CANDIDATES.join(", ");
    match found {
        Some((name, file)) => (
            name,
            format!(
                "the first of {list} that this host has ({})",
                file.display()
            ),
        ),
        None => (
            "cron".into(),
            format!("this host has none of {list}, so the answer will say it is unknown"),
        ),
    }
}

/// Wait for a role's ready file, or for its thread to fail.
fn wait_ready(path: &Path, thread: &thread::JoinHandle<Result<()>>) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(bytes) = std::fs::read(path) {
            return serde_json::from_slice(&bytes).context("unreadable ready file");
        }
        if thread.is_finished() {
            bail!("a demo daemon stopped while starting (run with -D to see why)");
        }
        thread::sleep(Duration::from_millis(5));
    }
    bail!("a demo daemon did not start within 10 s")
}

/// The manager dispatches only to agents it knows; wait until ours said hello.
fn wait_registered(mgmt_endpoint: &str, wire: &crate::transport::Wire, node: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let agents = mgmt::call_cmd(
            mgmt_endpoint,
            wire,
            crate::protocol::MANAGER_AGENTS,
            Duration::from_secs(1),
            1,
        )?;
        let up = agents["result"].as_array().into_iter().flatten();
        if up
            .into_iter()
            .any(|a| a["node"] == node && a["state"] == "up")
        {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(5));
    }
    bail!("the demo agent did not register within 10 s")
}
