//! `service-mgr-bench`: latency, throughput and memory figures of the shipped
//! executable, and the job store's throughput (see BENCHMARKS.md).
//!
//! Every process figure is measured against real processes started from the
//! `service-mgr` executable under test: a manager (`service-mgr daemon`) and
//! agents (`service-mgr agent`, a simulated fleet of N agents in one process,
//! or real agent processes with `--real-agents`), on loopback, in secure mode
//! as shipped: signed requests, accepted keys, a `[[policy]]` that allows the
//! bench's client `status`. Everything lives in a scratch directory that is
//! removed at the end; every child is killed on every way out. A crate of its
//! own so that the shipped binary carries no benchmark.

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Map, Value};
use service_mgr::client;
use service_mgr::config::{AgentConfig, PolicyRule};
use service_mgr::exit::Exit;
use service_mgr::jobstore::{JobStore, RedbStore, StoreEvent};
use service_mgr::logging;
use service_mgr::protocol::{self, ServiceRequest};
use service_mgr::security::{self, KeyPair, KeyStore, Role};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod failover;
mod fleet;

/// Measure latency, throughput and memory of service-mgr with a simulated fleet (see BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(name = "service-mgr-bench", version)]
pub struct BenchArgs {
    /// A short run: 5 repetitions, fleets of 1, 10 and 100 agents, 0.5 s throughput runs.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of each figure [default: 30; 5 with --quick].
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,
    /// Fleet sizes for the broadcast latency, comma-separated; the manager's memory
    /// is measured holding the largest [default: 1,100,1000; 1,10,100 with --quick].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
    /// Seconds of each throughput run, and at least of each job store run [default: 2; 0.5 with --quick].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Throughput runs per client count, and job store runs [default: 5; 3 with --quick].
    #[arg(long, value_name = "N")]
    pub runs: Option<usize>,
    /// Print the figures as one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run each agent as its own `service-mgr agent` process (at most 200)
    /// instead of a simulated fleet in one process.
    #[arg(long)]
    pub real_agents: bool,
    /// 0.1-compatible mode for comparison: allow_unsigned on the manager and the
    /// agents, requests unsigned (not the configuration as shipped).
    #[arg(long)]
    pub unsigned: bool,
    /// Also measure the PostgreSQL job store (`jobstore_postgres`) in this
    /// database (a scratch one: the bench writes its jobs there, then deletes them).
    #[arg(long, value_name = "URL", env = "SERVICE_MGR_BENCH_PG")]
    pub postgres: Option<String>,
    /// Simulated agents for the fleet figures: cold start, manager restart and
    /// all dropping at once, `manager.status` asked throughout [default: 10000;
    /// 1000 with --quick; 0 skips them].
    #[arg(long, value_name = "N")]
    pub fleet: Option<usize>,
    /// Only the job store figures (no daemons, no fleets).
    #[arg(long)]
    pub jobstore_only: bool,
    /// Keep the scratch directory (configs, keys, daemon logs) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// The service-mgr executable to measure [default: `service-mgr` beside this
    /// program, built first when run by `cargo run`].
    #[arg(long, value_name = "FILE", env = "SERVICE_MGR_BIN")]
    pub exe: Option<PathBuf>,
}

/// What a figure's median is held against.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Below(f64),
    AtLeast(f64),
}

/// One line of the report.
#[derive(Debug)]
pub struct Figure {
    id: String,
    label: String,
    unit: &'static str,
    /// Larger is better (throughput): the tail is the low end.
    higher_is_better: bool,
    pub samples: Vec<f64>,
    target: Option<Target>,
    /// Runs that went wrong (missing or failed results), counted, never hidden.
    errors: usize,
    /// Why the figure could not be measured (or the first run that went wrong).
    error: Option<String>,
    detail: Map<String, Value>,
}

impl Figure {
    pub fn new(id: impl Into<String>, label: impl Into<String>, unit: &'static str) -> Figure {
        Figure {
            id: id.into(),
            label: label.into(),
            unit,
            higher_is_better: false,
            samples: Vec::new(),
            target: None,
            errors: 0,
            error: None,
            detail: Map::new(),
        }
    }
    pub fn target(mut self, t: Target) -> Figure {
        self.target = Some(t);
        self
    }
    pub fn failed(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        if self.error.is_none() {
            self.error = Some(format!("{e:#}"));
        }
    }
    fn stats(&self) -> Option<Stats> {
        Stats::of(&self.samples, self.higher_is_better)
    }
    pub fn met(&self) -> Option<bool> {
        let s = self.stats()?;
        if self.errors > 0 {
            return Some(false);
        }
        self.target.map(|t| match t {
            Target::Below(x) => s.median < x,
            Target::AtLeast(x) => s.median >= x,
        })
    }
    pub fn to_json(&self) -> Value {
        let s = self.stats();
        let mut v = json!({
            "id": self.id,
            "label": self.label,
            "unit": self.unit,
            "runs": self.samples.len(),
            "median": s.map(|s| s.median),
            "p99": s.map(|s| s.p99),
            "min": s.map(|s| s.min),
            "max": s.map(|s| s.max),
            "target": self.target.map(|t| match t {
                Target::Below(x) => json!({"median_below": x}),
                Target::AtLeast(x) => json!({"median_at_least": x}),
            }),
            "met": self.met(),
            "errors": self.errors,
            "error": self.error,
        });
        if let Some(m) = v.as_object_mut() {
            m.extend(self.detail.clone());
        }
        v
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: f64,
    /// Nearest rank: the value 99 % of runs did at least as well as.
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[f64], higher_is_better: bool) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let rank = |p: f64| ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1;
        let p99 = if higher_is_better {
            v[rank(1.0)]
        } else {
            v[rank(99.0)]
        };
        Some(Stats {
            median,
            p99,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The knobs of one bench run, after defaults.
struct Plan {
    reps: usize,
    sizes: Vec<usize>,
    duration: Duration,
    runs: usize,
    real_agents: bool,
    unsigned: bool,
    postgres: Option<String>,
    jobstore_only: bool,
    fleet: usize,
}

const LOOPBACK: &str = "tcp://127.0.0.1:*";
const PREFIX: &str = "bench-";
const SERVICE: &str = "bench";
/// Agents answering in the throughput figure (the 10).
const THROUGHPUT_AGENTS: usize = 10;
/// Concurrent clients in the second throughput figure.
const MANY_CLIENTS: usize = 32;
const MAX_REAL_AGENTS: usize = 200;

/// Measure, then print the report (a table, or JSON with `--json`); `Exit::Error`
/// if a figure could not be measured or a run lost a result.
pub fn run(args: &BenchArgs, exe: &Path) -> Result<Exit> {
    let report = measure(args, exe)?;
    if args.json {
        println!("{}", client::to_json_pretty(&report.to_json()));
    } else {
        print!("{}", table(&report.config, &report.figures));
    }
    Ok(if report.failed() {
        Exit::Error
    } else {
        Exit::Ok
    })
}

/// Every figure of one bench run.
pub struct Report {
    config: Value,
    figures: Vec<Figure>,
}

impl Report {
    /// A figure could not be measured, or a run went wrong.
    pub fn failed(&self) -> bool {
        self.figures
            .iter()
            .any(|f| f.errors > 0 || f.stats().is_none())
    }
    /// What `--json` prints: `config` and `figures`.
    pub fn to_json(&self) -> Value {
        json!({
            "config": self.config,
            "figures": self.figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
        })
    }
}

/// The version `exe --version` reports; fails if `exe` does not run.
fn version_of(exe: &Path) -> Result<String> {
    let out = Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (build it with `cargo build --release`, or say which with --exe)",
                exe.display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().strip_prefix("service-mgr ") {
        Some(v) if out.status.success() => Ok(v.to_owned()),
        _ => bail!(
            "{} --version said {:?}: not a service-mgr executable",
            exe.display(),
            text.trim()
        ),
    }
}

/// Run every figure against the executable `exe`.
pub fn measure(args: &BenchArgs, exe: &Path) -> Result<Report> {
    let version = version_of(exe)?;
    let plan = Plan {
        reps: args.reps.unwrap_or(if args.quick { 5 } else { 30 }),
        sizes: args.sizes.clone().unwrap_or_else(|| {
            if args.quick {
                vec![1, 10, 100]
            } else {
                vec![1, 100, 1000]
            }
        }),
        duration: Duration::from_secs_f64(args.duration.unwrap_or(if args.quick {
            0.5
        } else {
            2.0
        })),
        runs: args.runs.unwrap_or(if args.quick { 3 } else { 5 }),
        real_agents: args.real_agents,
        unsigned: args.unsigned,
        postgres: args.postgres.clone(),
        jobstore_only: args.jobstore_only,
        fleet: args.fleet.unwrap_or(if args.quick { 1000 } else { 10_000 }),
    };
    anyhow::ensure!(plan.reps > 0, "--reps must be at least 1");
    anyhow::ensure!(plan.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        !plan.sizes.is_empty() && plan.sizes.iter().all(|&n| n > 0),
        "--sizes must list fleet sizes of at least 1"
    );
    anyhow::ensure!(
        args.duration.is_none_or(|d| d.is_finite() && d > 0.0),
        "--duration must be a positive number of seconds"
    );
    let largest = plan.sizes.iter().copied().max().unwrap_or(1);
    if plan.real_agents && largest.max(THROUGHPUT_AGENTS) > MAX_REAL_AGENTS {
        bail!("--real-agents runs one process per agent: at most {MAX_REAL_AGENTS} (see --sizes)");
    }
    // A fleet of 1000 needs thousands of sockets in the manager: children inherit the limit.
    let nofile = match service_mgr::runtime::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("bench: warning: {e:#}");
            0
        }
    };

    let config = json!({
        "version": version,
        "executable": exe.display().to_string(),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "security": if plan.unsigned { "off (allow_unsigned, unsigned requests)" } else { "on (signed requests, accepted keys, policy)" },
        "agents": if plan.real_agents { "real processes" } else { "simulated (agent --simulate N)" },
        "reps": plan.reps,
        "sizes": plan.sizes,
        "throughput_runs": plan.runs,
        "fleet": plan.fleet,
        "throughput_seconds": plan.duration.as_secs_f64(),
        "open_files_limit": nofile,
        "postgres": plan.postgres.as_deref().map(service_mgr::jobstore::postgres::redact),
    });
    if cfg!(debug_assertions) {
        eprintln!(
            "bench: WARNING: this is a DEBUG build; its figures say little about a release \
             build. Run `cargo run --release -p service-mgr-bench` for real figures."
        );
    }
    eprintln!("bench: configuration {config}");

    let scratch = Scratch::new(args.keep)?;
    let figures = run_all(&plan, &scratch.path, exe);
    drop(scratch);
    Ok(Report { config, figures })
}

/// Every figure in turn; one that fails is reported and the others still run.
fn run_all(plan: &Plan, dir: &Path, exe: &Path) -> Vec<Figure> {
    if plan.jobstore_only {
        return jobstore_figures(plan, dir);
    }
    let bench = match Bench::new(plan, dir, exe) {
        Ok(b) => b,
        Err(e) => {
            let mut f = Figure::new("setup", "setting up keys and configs", "");
            f.failed(&e);
            return vec![f];
        }
    };
    let mut figures = Vec::new();
    let mut memory = Vec::new();
    eprintln!("bench: idle manager and idle agent ...");
    memory.extend(bench.idle_memory());
    for &n in &plan.sizes {
        eprintln!(
            "bench: broadcast `status` to {n} agents, {} runs ...",
            plan.reps
        );
        let (latency, held) = bench.broadcast(n, n == *plan.sizes.iter().max().unwrap_or(&n));
        figures.push(latency);
        if let Some((mem, stop)) = held {
            memory.push(mem);
            figures.push(stop);
        }
    }
    for clients in [1, MANY_CLIENTS] {
        eprintln!(
            "bench: throughput, {THROUGHPUT_AGENTS} agents, {clients} client(s), {} runs ...",
            plan.runs
        );
        figures.push(bench.throughput(clients));
    }
    eprintln!(
        "bench: client process start to exit, {} runs ...",
        plan.reps
    );
    figures.push(bench.client_exit());
    eprintln!(
        "bench: failover between two managers, {} kills ...",
        plan.reps.min(5)
    );
    figures.push(bench.failover(plan.reps.min(5)));
    if plan.fleet > 0 && !plan.real_agents {
        figures.extend(bench.fleet(plan.fleet));
    }
    figures.extend(jobstore_figures(plan, dir));
    figures.extend(memory);
    figures
}

/// The job store figures: the embedded store lazily and durably, and
/// PostgreSQL when `--postgres` names a database (held against half the
/// lazy embedded figure, issue 14's target).
fn jobstore_figures(plan: &Plan, dir: &Path) -> Vec<Figure> {
    let mut figures = Vec::new();
    for kind in [StoreKind::Lazy, StoreKind::Durable] {
        eprintln!("bench: job store, {kind:?}, {} runs ...", plan.runs);
        figures.push(jobstore(plan, dir, kind));
    }
    match &plan.postgres {
        Some(url) => {
            eprintln!("bench: job store, PostgreSQL, {} runs ...", plan.runs);
            let mut f = jobstore(plan, dir, StoreKind::Postgres(url));
            if let Some(lazy) = figures[0].stats() {
                f = f.target(Target::AtLeast(lazy.median / 2.0));
                f.detail
                    .insert("target_is".into(), json!("half of jobstore_lazy's median"));
            }
            figures.push(f);
        }
        None => eprintln!(
            "bench: no PostgreSQL job store figure (--postgres URL or SERVICE_MGR_BENCH_PG)"
        ),
    }
    figures
}

/// Which store a job store figure measures.
#[derive(Debug, Clone, Copy)]
enum StoreKind<'a> {
    /// Embedded, lazy commits (as the manager runs it).
    Lazy,
    /// Embedded, an fsync per batch.
    Durable,
    /// PostgreSQL at this URL, through the writer thread.
    Postgres(&'a str),
}

/// The scratch directory, removed on drop unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new(keep: bool) -> Result<Scratch> {
        let path = std::env::temp_dir().join(format!(
            "service-mgr-bench-{}-{}",
            std::process::id(),
            service_mgr::clock::now_ms()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create the scratch directory {}", path.display()))?;
        Ok(Scratch { path, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: scratch directory kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process (manager or agents); killed and reaped on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    ready: Value,
    /// A manager's state_dir (its key is there).
    state_dir: Option<PathBuf>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn ep(&self, key: &str) -> Result<String> {
        self.ready[key]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the {} ready file lacks {key}: {}", self.name, self.ready))
    }
    /// Fails with the end of its log if the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "the {} exited ({status}); its log ends:\n{}",
                self.name,
                log_tail(&self.log)
            ),
            Err(e) => Err(e).with_context(|| format!("cannot check on the {}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Start `service-mgr ARGS --ready-file F start` and wait until F appears.
fn spawn(exe: &Path, dir: &Path, name: &str, args: &[String], within: Duration) -> Result<Proc> {
    let file_name = name.replace(' ', "-");
    let ready = dir.join(format!("{file_name}.ready.json"));
    let log = dir.join(format!("{file_name}.log"));
    let _ = std::fs::remove_file(&ready);
    let stderr =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(exe)
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .arg("start")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start the {name} ({})", exe.display()))?;
    let mut p = Proc {
        name: name.to_owned(),
        child,
        log,
        ready: Value::Null,
        state_dir: None,
    };
    let deadline = Instant::now() + within;
    loop {
        if let Ok(bytes) = std::fs::read(&ready) {
            if let Ok(doc) = serde_json::from_slice(&bytes) {
                p.ready = doc;
                return Ok(p);
            }
        }
        p.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "the {name} was not ready within {} s; its log ends:\n{}",
                within.as_secs(),
                log_tail(&p.log)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `service-mgr daemon` arguments for a manager keeping its state in
/// `state`, each of its endpoints `endpoint(config key)`.
fn manager_args(state: &Path, endpoint: impl Fn(&str) -> Result<String>) -> Result<Vec<String>> {
    let mut args: Vec<String> = vec!["daemon".into(), "-f".into(), "/dev/null".into()];
    let state = toml::Value::String(state.display().to_string());
    args.extend(["-O".into(), format!("state_dir={state}")]);
    for ep in [
        "frontend_endpoint",
        "backend_endpoint",
        "sink_endpoint",
        "mgmt_endpoint",
    ] {
        args.extend(["-O".into(), format!("{ep}={}", endpoint(ep)?)]);
    }
    Ok(args)
}

/// Keys and paths shared by every scenario.
struct Bench<'a> {
    plan: &'a Plan,
    dir: PathBuf,
    /// The service-mgr executable every process runs.
    exe: PathBuf,
    client_key: Arc<KeyPair>,
    client_key_file: PathBuf,
    client_pub_file: PathBuf,
    /// How the client reaches each manager's frontend (CURVE to its key).
    wires: std::sync::Mutex<std::collections::HashMap<String, service_mgr::transport::Wire>>,
    /// The agents' key_file; simulated agents keep theirs in `simulated/` beside it.
    agent_key_file: PathBuf,
    service_command: PathBuf,
    log: slog::Logger,
}

/// A manager with its agents.
struct Deployment {
    manager: Proc,
    agents: Vec<Proc>,
    nodes: usize,
}

impl Deployment {
    fn check_alive(&mut self) -> Result<()> {
        self.manager.check_alive()?;
        self.agents.iter_mut().try_for_each(Proc::check_alive)
    }
}

impl<'a> Bench<'a> {
    fn new(plan: &'a Plan, dir: &Path, exe: &Path) -> Result<Bench<'a>> {
        let client_key_file = dir.join("client.key");
        security::keygen(&client_key_file, Role::Client, "bench", false)
            .context("cannot make the bench's client key")?;
        let client_key = Arc::new(KeyPair::load(&client_key_file)?);
        let keys = dir.join("agent-keys");
        std::fs::create_dir_all(&keys)
            .with_context(|| format!("cannot create {}", keys.display()))?;
        // Agents run a service command that does nothing, as fast as a fork can.
        let service_command = dir.join("fake-service");
        std::fs::write(&service_command, "#!/bin/sh\nexit 0\n")
            .with_context(|| format!("cannot write {}", service_command.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&service_command, std::fs::Permissions::from_mode(0o755))?;
        }
        let service_command = ["/bin/true", "/usr/bin/true"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or(service_command);
        Ok(Bench {
            plan,
            dir: dir.to_owned(),
            exe: exe.to_owned(),
            client_key,
            client_pub_file: dir.join("client.key.pub"),
            wires: Default::default(),
            client_key_file,
            agent_key_file: keys.join("agent.key"),
            service_command,
            log: logging::discard(),
        })
    }

    fn key(&self) -> Option<Arc<KeyPair>> {
        (!self.plan.unsigned).then(|| self.client_key.clone())
    }

    /// A fresh manager whose key store accepts the client and the `agent_keys` files.
    fn manager(&self, name: &str, agent_keys: &[PathBuf]) -> Result<Proc> {
        let state = self.dir.join(format!("{name}-state"));
        let mut store = KeyStore::open(&state.join("keys"))
            .with_context(|| format!("cannot open the key store of the {name}"))?;
        store.import_accepted(&self.client_pub_file)?;
        for f in agent_keys {
            store.import_accepted(f)?;
        }
        drop(store);
        let mut args = manager_args(&state, |_| Ok(LOOPBACK.into()))?;
        if self.plan.unsigned {
            args.extend(["-O".into(), "allow_unsigned=true".into()]);
        }
        let mut p = spawn(&self.exe, &self.dir, name, &args, Duration::from_secs(20))?;
        p.state_dir = Some(state);
        let wire = match manager_key(&p)? {
            Some(key) => service_mgr::transport::Wire::curve(&self.client_key, &key),
            None => service_mgr::transport::Wire::Plain,
        };
        self.wires
            .lock()
            .unwrap()
            .insert(p.ep("frontend_endpoint")?, wire);
        Ok(p)
    }

    /// The wire to the manager whose frontend this is.
    fn wire(&self, frontend: &str) -> service_mgr::transport::Wire {
        self.wires
            .lock()
            .unwrap()
            .get(frontend)
            .cloned()
            .unwrap_or(service_mgr::transport::Wire::Plain)
    }

    /// The agents' config file for `manager`: endpoints, keys, fake service, policy.
    fn agent_config(&self, manager: &Proc, name: &str) -> Result<PathBuf> {
        let cfg = AgentConfig {
            manager_endpoint: manager.ep("backend_endpoint")?,
            sink_endpoint: manager.ep("sink_endpoint")?,
            mgmt_endpoint: LOOPBACK.into(),
            manager_key: Some(
                manager.ready["manager_key"]
                    .as_str()
                    .unwrap_or("plaintext")
                    .to_owned(),
            ),
            key_file: Some(self.agent_key_file.clone()),
            authorized_clients: Some(self.client_pub_file.clone()),
            service_command: Some(self.service_command.clone()),
            allow_unsigned: self.plan.unsigned,
            policy: vec![PolicyRule {
                name: "bench".into(),
                keys: vec![self.client_key.public().to_string()],
                commands: vec!["status".into()],
                services: vec!["*".into()],
                deny: Vec::new(),
            }],
            ..AgentConfig::default()
        };
        let path = self.dir.join(format!("{name}-agent.toml"));
        let text = toml::to_string(&cfg).context("cannot write the agents' config")?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Key files listing the `n` agents' public keys, made before the manager starts.
    fn fleet_keys(&self, n: usize) -> Result<Vec<PathBuf>> {
        if self.plan.real_agents {
            let dir = self.dir.join("real-agents");
            let list = service_mgr::agent::simulate::ensure_keys(&dir, PREFIX, n)
                .context("cannot make the agents' keys")?;
            Ok(vec![list])
        } else {
            // Where the simulator will look for them, given the config's key_file.
            let dir = service_mgr::agent::simulate::key_dir(&AgentConfig {
                key_file: Some(self.agent_key_file.clone()),
                ..AgentConfig::default()
            });
            let list = service_mgr::agent::simulate::ensure_keys(&dir, PREFIX, n)
                .context("cannot make the simulated agents' keys")?;
            Ok(vec![list])
        }
    }

    /// A manager and `n` agents, every one registered (`up`).
    fn deploy(&self, name: &str, n: usize) -> Result<Deployment> {
        let keys = self.fleet_keys(n)?;
        let manager = self.manager(&format!("{name} manager"), &keys)?;
        let config = self.agent_config(&manager, name)?;
        let mut d = Deployment {
            manager,
            agents: Vec::new(),
            nodes: n,
        };
        let within = Duration::from_secs(30) + Duration::from_millis(100) * n as u32;
        if self.plan.real_agents {
            let keys = self.dir.join("real-agents");
            for i in 1..=n {
                let node = node_name(i);
                let args = real_agent_args(&config, &keys, &node);
                d.agents.push(spawn(
                    &self.exe,
                    &self.dir,
                    &format!("{name} agent {node}"),
                    &args,
                    Duration::from_secs(20),
                )?);
            }
        } else {
            let args = vec![
                "agent".to_owned(),
                "-f".into(),
                config.display().to_string(),
                "--simulate".into(),
                n.to_string(),
                "--node-prefix".into(),
                PREFIX.into(),
            ];
            d.agents.push(spawn(
                &self.exe,
                &self.dir,
                &format!("{name} fleet"),
                &args,
                within,
            )?);
        }
        wait_up(&mut d, within)?;
        Ok(d)
    }

    /// Resident memory of a manager with no agents, and of one real agent, both idle.
    fn idle_memory(&self) -> Vec<Figure> {
        let mut mf = Figure::new("rss_manager_idle", "memory: idle manager (RSS)", "MiB");
        let mut af = Figure::new("rss_agent_idle", "memory: idle agent process (RSS)", "MiB")
            .target(Target::Below(5.0));
        let outcome = (|| -> Result<()> {
            let node = "bench-agent";
            let keys = self.dir.join("idle-agent.pub");
            let public = security::keygen(&self.agent_key_file, Role::Agent, node, true)?;
            std::fs::write(&keys, format!("{public}\n"))
                .with_context(|| format!("cannot write {}", keys.display()))?;
            let manager = self.manager("idle manager", &[keys])?;
            std::thread::sleep(Duration::from_millis(500));
            sample_memory(&mut mf, manager.pid(), self.plan.reps.min(10))?;
            let config = self.agent_config(&manager, "idle")?;
            let agent = spawn(
                &self.exe,
                &self.dir,
                "idle agent",
                &[
                    "agent".into(),
                    "-f".into(),
                    config.display().to_string(),
                    "-n".into(),
                    node.into(),
                ],
                Duration::from_secs(20),
            )?;
            let mut d = Deployment {
                manager,
                agents: vec![agent],
                nodes: 1,
            };
            wait_until_up(&mut d, |a| a["node"] == node, 1, Duration::from_secs(20))?;
            // One request answered, then idle: what an agent holds between requests.
            let ctx = zmq::Context::new();
            let front = d.manager.ep("frontend_endpoint")?;
            self.broadcast_once(&ctx, &front, 1)?;
            std::thread::sleep(Duration::from_millis(500));
            sample_memory(&mut af, d.agents[0].pid(), self.plan.reps.min(10))?;
            Ok(())
        })();
        if let Err(e) = outcome {
            for f in [&mut mf, &mut af] {
                if f.samples.is_empty() {
                    f.failed(&e);
                }
            }
        }
        vec![mf, af]
    }

    /// One broadcast of `status` to every agent; its time and whether all `n` answered ok.
    fn broadcast_once(&self, ctx: &zmq::Context, frontend: &str, n: usize) -> Result<Duration> {
        let req = client::Request {
            endpoint: frontend.to_owned(),
            preferred: Default::default(),
            request: ServiceRequest::new("status", SERVICE, protocol::TOPIC_ANY),
            wait: Some(Duration::from_secs(30)),
            retries: 1,
            timeout: Duration::from_secs(10),
            expect: None,
            key: self.key(),
            wire: self.wire(frontend),
        };
        let started = Instant::now();
        let got = client::collect(ctx, &req, &self.log, None)?;
        let elapsed = started.elapsed();
        let expected = got.expected.as_ref().map_or(0, Vec::len);
        let good = got
            .results
            .iter()
            .filter_map(Value::as_object)
            .filter(|r| {
                client::status_of(r) == "ok"
                    && (self.plan.unsigned || r.get("verified") == Some(&Value::Bool(true)))
            })
            .count();
        if expected != n || good != n {
            let sample = got
                .results
                .iter()
                .find(|r| {
                    r.as_object().is_some_and(|o| {
                        client::status_of(o) != "ok" || o.get("verified").is_none()
                    })
                })
                .map(|r| format!("; e.g. {r}"))
                .unwrap_or_default();
            bail!(
                "job {}: {good} of {n} agents answered ok and verified (the manager expected {expected}, {} results arrived){sample}",
                got.uuid,
                got.results.len()
            );
        }
        Ok(elapsed)
    }

    /// Request to last result, broadcast to `n` agents; with `hold`, also the
    /// manager's memory once they all registered, and its stop time after the runs.
    fn broadcast(&self, n: usize, hold: bool) -> (Figure, Option<(Figure, Figure)>) {
        let plural = if n == 1 { "" } else { "s" };
        let mut f = Figure::new(
            format!("broadcast_{n}"),
            format!("broadcast status to {n} agent{plural}: request to last result"),
            "ms",
        );
        if n == 1000 {
            f = f.target(Target::Below(100.0));
        }
        f.detail.insert("agents".into(), json!(n));
        let mut mem = hold.then(|| {
            let mut m = Figure::new(
                format!("rss_manager_{n}_agents"),
                format!("memory: manager holding {n} agent{plural} (RSS)"),
                "MiB",
            );
            m.detail.insert("agents".into(), json!(n));
            let mut stop = Figure::new(
                format!("stop_manager_{n}_agents"),
                format!("manager holding {n} agent{plural}: SIGTERM to exit"),
                "ms",
            )
            .target(Target::Below(5000.0));
            stop.detail.insert("agents".into(), json!(n));
            (m, stop)
        });
        let mut d = match self.deploy(&format!("broadcast-{n}"), n) {
            Ok(d) => d,
            Err(e) => {
                f.failed(&e);
                if let Some((m, stop)) = mem.as_mut() {
                    m.failed(&e);
                    stop.failed(&e);
                }
                return (f, mem);
            }
        };
        if let Some((m, _)) = mem.as_mut() {
            std::thread::sleep(Duration::from_secs(1));
            if let Err(e) = sample_memory(m, d.manager.pid(), self.plan.reps.min(10)) {
                m.failed(&e);
            }
        }
        let ctx = zmq::Context::new();
        let front = match d.manager.ep("frontend_endpoint") {
            Ok(e) => e,
            Err(e) => {
                f.failed(&e);
                return (f, mem);
            }
        };
        // One run unmeasured: connections and caches warm up.
        if let Err(e) = self.broadcast_once(&ctx, &front, n) {
            f.failed(&e);
        }
        let mut received = 0;
        for _ in 0..self.plan.reps {
            match self.broadcast_once(&ctx, &front, n) {
                Ok(t) => {
                    f.samples.push(ms(t));
                    received += n;
                }
                Err(e) => {
                    f.failed(&e.context(alive_note(&mut d)));
                }
            }
        }
        f.detail
            .insert("results_expected".into(), json!(n * self.plan.reps));
        f.detail.insert("results_received".into(), json!(received));
        if let Some((_, stop)) = mem.as_mut() {
            match stop_manager(&mut d.manager) {
                Ok(t) => stop.samples.push(ms(t)),
                Err(e) => stop.failed(&e),
            }
        }
        (f, mem)
    }

    /// Results per second through one manager, 10 agents answering, `clients` at once.
    fn throughput(&self, clients: usize) -> Figure {
        let mut f = Figure::new(
            format!(
                "throughput_{clients}_client{}",
                if clients == 1 { "" } else { "s" }
            ),
            format!(
                "results/s, {THROUGHPUT_AGENTS} agents, {clients} client{} at once",
                if clients == 1 { "" } else { "s" }
            ),
            "results/s",
        );
        // The target is the manager's capacity, which one client waiting for
        // each answer before the next request cannot load.
        if clients > 1 {
            f = f.target(Target::AtLeast(20_000.0));
        }
        f.higher_is_better = true;
        f.detail.insert("agents".into(), json!(THROUGHPUT_AGENTS));
        f.detail.insert("clients".into(), json!(clients));
        let mut d = match self.deploy(&format!("throughput-{clients}"), THROUGHPUT_AGENTS) {
            Ok(d) => d,
            Err(e) => {
                f.failed(&e);
                return f;
            }
        };
        let front = match d.manager.ep("frontend_endpoint") {
            Ok(e) => e,
            Err(e) => {
                f.failed(&e);
                return f;
            }
        };
        let ctx = zmq::Context::new();
        let (mut broadcasts, mut results) = (0usize, 0usize);
        // The first run warms up and is not counted.
        for run in 0..=self.plan.runs {
            let deadline = Instant::now() + self.plan.duration;
            let started = Instant::now();
            let outcomes: Vec<(usize, usize, Option<anyhow::Error>)> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..clients)
                    .map(|_| {
                        let (ctx, front) = (&ctx, front.as_str());
                        s.spawn(move || {
                            let (mut ok, mut bad, mut err) = (0, 0, None);
                            while Instant::now() < deadline {
                                match self.broadcast_once(ctx, front, THROUGHPUT_AGENTS) {
                                    Ok(_) => ok += 1,
                                    Err(e) => {
                                        bad += 1;
                                        err.get_or_insert(e);
                                        if bad > 3 {
                                            break;
                                        }
                                    }
                                }
                            }
                            (ok, bad, err)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| {
                        w.join().unwrap_or((
                            0,
                            1,
                            Some(anyhow::anyhow!("a client thread panicked")),
                        ))
                    })
                    .collect()
            });
            let elapsed = started.elapsed().as_secs_f64();
            let ok: usize = outcomes.iter().map(|o| o.0).sum();
            let mut bad = 0;
            for (_, b, e) in outcomes {
                bad += b;
                if let Some(e) = e {
                    f.failed(&e.context(alive_note(&mut d)));
                    f.errors += b.saturating_sub(1);
                }
            }
            if run > 0 && bad == 0 && ok > 0 {
                f.samples
                    .push((ok * THROUGHPUT_AGENTS) as f64 / elapsed.max(1e-9));
                broadcasts += ok;
                results += ok * THROUGHPUT_AGENTS;
            }
        }
        f.detail.insert("broadcasts".into(), json!(broadcasts));
        f.detail.insert("results_received".into(), json!(results));
        f.detail.insert(
            "results_expected".into(),
            json!(broadcasts * THROUGHPUT_AGENTS),
        );
        f
    }

    /// `service-mgr client ... status` as a process, start to exit, against one agent.
    fn client_exit(&self) -> Figure {
        let mut f = Figure::new("client_exit", "client process start to exit, 1 agent", "ms")
            .target(Target::Below(10.0));
        let outcome = (|| -> Result<()> {
            let mut d = self.deploy("client", 1)?;
            let exe = &self.exe;
            let front = d.manager.ep("frontend_endpoint")?;
            let mut args: Vec<String> = vec!["client".into(), "-e".into(), front];
            if !self.plan.unsigned {
                args.extend(["-k".into(), self.client_key_file.display().to_string()]);
            }
            let pin = d.manager.ready["manager_key"]
                .as_str()
                .unwrap_or("plaintext");
            args.extend(["--manager-key".into(), pin.to_owned()]);
            args.extend(
                [
                    "-T", "any", "-c", "status", "-s", SERVICE, "--format", "json",
                ]
                .map(String::from),
            );
            // The first run (page cache, connections) is not counted.
            for run in 0..=self.plan.reps {
                let started = Instant::now();
                let out = Command::new(exe)
                    .args(&args)
                    // No default key when unsigned: a key file in ~/.config would be used otherwise.
                    .env("SERVICE_MGR_KEY", "none")
                    .stdin(Stdio::null())
                    .output()
                    .context("cannot run the client")?;
                let elapsed = started.elapsed();
                if !out.status.success() {
                    let e = anyhow::anyhow!(
                        "the client exited with {}: {}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim(),
                        String::from_utf8_lossy(&out.stdout)
                            .chars()
                            .take(400)
                            .collect::<String>()
                    );
                    f.failed(&e.context(alive_note(&mut d)));
                } else if run > 0 {
                    f.samples.push(ms(elapsed));
                }
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            f.failed(&e);
        }
        f
    }
}

/// Nodes per job in the job store figures.
const STORE_NODES: usize = 2000;
/// Results per batch: what the manager's poll loop hands the store at most.
const STORE_BATCH: usize = 100;

/// Results per second the manager's job store takes, in-process: jobs of
/// 2000 nodes, their results in batches of 100, committed lazily (as the
/// manager does) or durably (an fsync per batch), or queued for the
/// PostgreSQL writer. Only the result batches and the final flush (for
/// PostgreSQL: until the writer has committed everything) are timed, each run
/// for at least the throughput duration.
fn jobstore(plan: &Plan, dir: &Path, kind: StoreKind) -> Figure {
    let (id, label) = match kind {
        StoreKind::Lazy => ("jobstore_lazy", "job store: results/s, lazy commits"),
        StoreKind::Durable => (
            "jobstore_durable",
            "job store: results/s, an fsync per batch",
        ),
        StoreKind::Postgres(_) => (
            "jobstore_postgres",
            "job store: results/s, PostgreSQL (writer thread)",
        ),
    };
    let mut f = Figure::new(id, label, "results/s");
    f.higher_is_better = true;
    f.detail.insert("nodes_per_job".into(), json!(STORE_NODES));
    f.detail.insert("batch".into(), json!(STORE_BATCH));
    let outcome = (|| -> Result<usize> {
        let store: Box<dyn JobStore> = match kind {
            StoreKind::Postgres(url) => {
                let log = slog::Logger::root(slog::Discard, slog::o!());
                Box::new(service_mgr::jobstore::PgStore::open(url, &log)?)
            }
            _ => {
                let path = dir.join(format!("{id}.redb"));
                let mut store = RedbStore::open(&path)
                    .with_context(|| format!("cannot open the job store {}", path.display()))?;
                store.set_lazy(matches!(kind, StoreKind::Lazy));
                Box::new(store)
            }
        };
        // Unique per bench run: a shared database may hold an earlier run's jobs.
        let tag = format!(
            "bench{}-{}",
            std::process::id(),
            service_mgr::clock::now_ms()
        );
        let payload = json!({"msg": "Executed service status request", "result": {
            "node": "node", "service": "sshd", "returncode": 0,
            "stdout": "sshd is running as pid 1768.\n".repeat(4), "stderr": "",
            "system": "Linux", "version": "Linux 6.1.0-18-amd64 x86_64"}});
        // The store keeps a result as the bytes that arrived.
        let payload = serde_json::value::to_raw_value(&payload)?;
        let nodes: Vec<String> = (0..STORE_NODES)
            .map(|i| format!("node{i:05}.example.org"))
            .collect();
        let mut stored = 0;
        // The first run warms up and is not counted.
        for run in 0..=plan.runs {
            let (mut results, mut busy, mut job) = (0, Duration::ZERO, 0);
            while busy < plan.duration || results == 0 {
                let uuid = format!("{tag}-{run}-{job}");
                job += 1;
                store.apply(&[StoreEvent::NewJob {
                    uuid: uuid.clone(),
                    created_ms: 1,
                    request: json!({"cmd": "status", "service": "sshd", "topic": "any"}),
                    expected: nodes.clone(),
                    client: None,
                }])?;
                let batches: Vec<Vec<StoreEvent>> = nodes
                    .chunks(STORE_BATCH)
                    .map(|chunk| {
                        chunk
                            .iter()
                            .map(|node| StoreEvent::Result {
                                uuid: uuid.clone(),
                                node: node.clone(),
                                status: "ok".into(),
                                received_ms: 2,
                                result: payload.clone(),
                            })
                            .collect()
                    })
                    .collect();
                let started = Instant::now();
                for batch in &batches {
                    store.apply(batch)?;
                }
                // PostgreSQL's apply only queues: the time is the writer's.
                if matches!(kind, StoreKind::Postgres(_)) {
                    store.flush()?;
                }
                busy += started.elapsed();
                results += nodes.len();
            }
            let started = Instant::now();
            store.flush()?;
            busy += started.elapsed();
            let first = store.get(&format!("{tag}-{run}-0"))?;
            let got = first.map_or(0, |j| j.results.len());
            anyhow::ensure!(
                got == STORE_NODES,
                "job {run}-0 holds {got} of {STORE_NODES} results"
            );
            if run > 0 {
                f.samples
                    .push(results as f64 / busy.as_secs_f64().max(1e-9));
                stored += results;
            }
        }
        // The bench's jobs (created at 1 ms) go; the store does it before it closes.
        store.expire(2)?;
        Ok(stored)
    })();
    match outcome {
        Ok(n) => {
            f.detail.insert("results_stored".into(), json!(n));
        }
        Err(e) => f.failed(&e),
    }
    f
}

fn node_name(i: usize) -> String {
    service_mgr::agent::simulate::node_name(PREFIX, i)
}

/// A real agent's command line: `node` with `config` and its key in `keys`.
fn real_agent_args(config: &Path, keys: &Path, node: &str) -> Vec<String> {
    let key = keys.join(format!("{node}.key"));
    vec![
        "agent".to_owned(),
        "-f".into(),
        config.display().to_string(),
        "-n".into(),
        node.to_owned(),
        "-O".into(),
        format!(
            "key_file={}",
            toml::Value::String(key.display().to_string())
        ),
    ]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What to add to a failed run: whether the daemons are still alive.
fn alive_note(d: &mut Deployment) -> String {
    match d.check_alive() {
        Ok(()) => "a run went wrong (manager and agents still running)".into(),
        Err(e) => format!("a run went wrong: {e:#}"),
    }
}

/// Wait until the manager lists all of the deployment's agents as up.
fn wait_up(d: &mut Deployment, within: Duration) -> Result<()> {
    let n = d.nodes;
    wait_until_up(
        d,
        |a| a["node"].as_str().is_some_and(|s| s.starts_with(PREFIX)),
        n,
        within,
    )
}

/// The manager's public key from its ready file (`None`: plaintext, allow_unsigned).
fn manager_key(p: &Proc) -> Result<Option<service_mgr::security::PublicKey>> {
    p.ready["manager_key"]
        .as_str()
        .map(|l| l.parse().context("the manager's key line does not parse"))
        .transpose()
}

/// The management socket admits the manager's own key: the bench holds it,
/// as root on the manager's host does.
fn mgmt_wire(p: &Proc) -> Result<service_mgr::transport::Wire> {
    let Some(key) = manager_key(p)? else {
        return Ok(service_mgr::transport::Wire::Plain);
    };
    let state = p
        .state_dir
        .as_ref()
        .context("the manager's state_dir is unknown")?;
    let own = KeyPair::load(&state.join("manager.key"))?;
    Ok(service_mgr::transport::Wire::curve(&own, &key))
}

fn wait_until_up(
    d: &mut Deployment,
    ours: impl Fn(&Value) -> bool,
    n: usize,
    within: Duration,
) -> Result<()> {
    let mgmt = d.manager.ep("mgmt_endpoint")?;
    let wire = mgmt_wire(&d.manager)?;
    let deadline = Instant::now() + within;
    let mut up = 0;
    while Instant::now() < deadline {
        d.check_alive()?;
        let agents = service_mgr::mgmt::call_cmd(
            &mgmt,
            &wire,
            protocol::MANAGER_AGENTS,
            Duration::from_secs(5),
            1,
        )
        .context("cannot ask the manager for its agents")?;
        up = agents["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| ours(a) && a["state"] == "up")
            .count();
        if up >= n {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(if n > 100 { 200 } else { 20 }));
    }
    bail!(
        "only {up} of {n} agents registered within {} s; the agents' log ends:\n{}",
        within.as_secs(),
        d.agents
            .first()
            .map(|a| log_tail(&a.log))
            .unwrap_or_default()
    )
}

/// SIGTERM to the manager, until it exited (0): one sample per bench run.
fn stop_manager(manager: &mut Proc) -> Result<Duration> {
    let asked = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &manager.pid().to_string()])
        .status()
        .context("cannot run kill(1) to stop the manager")?;
    anyhow::ensure!(sent.success(), "kill -TERM {} failed", manager.pid());
    loop {
        match manager.child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(asked.elapsed()),
            Ok(Some(status)) => bail!(
                "the {} exited ({status}) on SIGTERM; its log ends:\n{}",
                manager.name,
                log_tail(&manager.log)
            ),
            Ok(None) if asked.elapsed() < Duration::from_secs(300) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) => bail!("the {} did not exit within 300 s of SIGTERM", manager.name),
            Err(e) => return Err(e).context("cannot wait for the manager"),
        }
    }
}

/// Memory of `pid`, sampled `count` times 100 ms apart: VmRSS, and Pss when readable.
fn sample_memory(f: &mut Figure, pid: u32, count: usize) -> Result<()> {
    let mut pss = Vec::new();
    for i in 0..count.max(1) {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status (Linux only)"))?;
        let rss = proc_kib(&status, "VmRSS:")
            .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
        f.samples.push(rss as f64 / 1024.0);
        // The process's peak so far (a cold start's backlog, say).
        if let Some(hwm) = proc_kib(&status, "VmHWM:") {
            f.detail.insert("peak_mib".into(), json!(hwm / 1024));
        }
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            if let Some(kib) = proc_kib(&rollup, "Pss:") {
                pss.push(kib as f64 / 1024.0);
            }
        }
    }
    if let Some(s) = Stats::of(&pss, false) {
        f.detail.insert("pss_mib_median".into(), json!(s.median));
    }
    f.detail.insert("pid_sampled".into(), json!(pid));
    Ok(())
}

/// A `Name:   1234 kB` line of a /proc file, in KiB.
pub fn proc_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The report for people.
fn table(config: &Value, figures: &[Figure]) -> String {
    let mut out = String::new();
    let c = |k: &str| match &config[k] {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    out.push_str(&format!(
        "service-mgr {} bench: {} build, {} cores, security {}, agents {}\n",
        c("version"),
        c("profile"),
        c("cores"),
        c("security"),
        c("agents")
    ));
    if c("profile") == "debug" {
        out.push_str(
            "WARNING: debug build; run `cargo run --release -p service-mgr-bench` for real figures\n",
        );
    }
    out.push('\n');
    let fmt = |x: f64| {
        if x >= 1000.0 {
            format!("{x:.0}")
        } else if x >= 10.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.2}")
        }
    };
    let rows: Vec<[String; 8]> = figures
        .iter()
        .map(|f| {
            let s = f.stats();
            let v = |g: fn(&Stats) -> f64| s.as_ref().map_or("-".into(), |s| fmt(g(s)));
            let target = match f.target {
                Some(Target::Below(x)) => format!("< {}", fmt(x)),
                Some(Target::AtLeast(x)) => format!(">= {}", fmt(x)),
                None => String::new(),
            };
            let met = match (f.met(), f.stats().is_none() || f.errors > 0) {
                (_, true) => "ERROR".to_owned(),
                (Some(true), _) => "yes".to_owned(),
                (Some(false), _) => "NO".to_owned(),
                (None, _) => String::new(),
            };
            [
                f.label.clone(),
                v(|s| s.median),
                v(|s| s.p99),
                v(|s| s.min),
                v(|s| s.max),
                f.unit.to_owned(),
                target,
                met,
            ]
        })
        .collect();
    let head = [
        "figure", "median", "p99", "min", "max", "unit", "target", "met",
    ]
    .map(String::from);
    let mut widths = [0usize; 8];
    for r in std::iter::once(&head).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in std::iter::once(&head).chain(&rows) {
        let mut line = format!("{:<w$}", r[0], w = widths[0]);
        for (i, cell) in r.iter().enumerate().skip(1) {
            if i >= 5 {
                line.push_str(&format!("  {:<w$}", cell, w = widths[i]));
            } else {
                line.push_str(&format!("  {:>w$}", cell, w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let failures: Vec<&Figure> = figures.iter().filter(|f| f.error.is_some()).collect();
    if !failures.is_empty() {
        out.push('\n');
        for f in failures {
            out.push_str(&format!(
                "error in {:?} ({} failed runs): {}\n",
                f.label,
                f.errors,
                f.error.as_deref().unwrap_or_default()
            ));
        }
    }
    out.push_str(
        "\np99: nearest rank over the runs; for results/s the rate 99 % of runs reached.\n",
    );
    out
}
