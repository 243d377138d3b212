//! Management: commands to the REP socket of a manager or an agent
//! (`service-mgr mgmt`, `service-mgrd -e EP status|stop`), the manager's key
//! store on its own host (`mgmt keys`, salt-key style), and `keygen`.

use crate::args::VersionFlag;
use crate::clock;
use crate::config::{self, ManagerConfig};
use crate::exit::Exit;
use crate::output::{self, to_json_pretty, MgmtFormat, Style};
use crate::protocol::mgmt::{AgentInfo, AgentState, HistoryEntry, JobRecord, JobSummary};
use crate::protocol::{self as p, MgmtBody, MgmtReply, MgmtRequest};
use crate::security::{self, KeyPair, KeyState, KeyStore, Purpose, Role};
use crate::transport;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// `service-mgr mgmt`'s command line.
#[derive(Debug, Args)]
pub struct MgmtArgs {
    /// Management endpoint of a manager (port 5800) or an agent (port 6000);
    /// $SERVICE_MGR_PORT moves the default with the other ports.
    #[arg(
        short = 'e',
        long = "endpoint",
        value_name = "ENDPOINT",
        default_value_t = config::default_endpoint("localhost", config::port::MGMT)
    )]
    pub endpoint: String,
    /// Milliseconds to wait for the answer per try.
    #[arg(short = 't', long = "timeout", default_value_t = 1000)]
    pub timeout: u64,
    /// Tries.
    #[arg(short = 'r', long = "retries", default_value_t = 3)]
    pub retries: u32,
    /// manager.status, manager.shutdown, manager.agents, manager.jobs, manager.job,
    /// manager.forget, manager.history, agent.status, agent.shutdown; short forms: status,
    /// agents, jobs, job ID, history (who asked what where, and the answers: see --node,
    /// --service, --since, --client), `agents forget NODE` (a lost or stopped agent is no
    /// longer expected to answer);
    /// and `keys list|accept|reject|delete|import ...` (local, on the manager's host).
    #[arg(value_parser = crate::hints::Hints(&crate::hints::MGMT_COMMANDS),
          hide_possible_values = true)]
    pub command: String,
    /// Arguments of the command (job ID; agents forget NODE; keys: a fingerprint, key id,
    /// name or file).
    pub args: Vec<String>,
    /// Client key to sign commands that change something (shutdown) [default: as the client's].
    #[arg(short = 'k', long = "key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The daemon's public key, pinned: for the manager as the client's --manager-key; for an
    /// agent its agent.key.pub (file or line) [default: the key_file of the local config];
    /// `plaintext` for a 0.1 or allow_unsigned daemon.
    // --manager-key too: the error for a missing manager key says that name.
    #[arg(
        long = "server-key",
        visible_alias = "manager-key",
        value_name = "FILE|LINE",
        env = "SERVICE_MGR_SERVER_KEY"
    )]
    pub server_key: Option<String>,
    /// keys: the manager's key store [default: keys in the manager's state_dir].
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
    /// keys: the manager's config file, to find its state_dir.
    #[arg(short = 'f', long = "file", value_name = "CONFIG")]
    pub config: Option<PathBuf>,
    /// keys accept|import: accept an agent key whose node name an accepted key
    /// holds (a reinstalled node), rejecting that key: one node, one key.
    #[arg(long)]
    pub force: bool,
    /// jobs: jobs per page [default: 50, at most 1000]; job: results per page
    /// [default: 1000]. A page that is not the last says where the next starts.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// jobs, job, history: skip the first N (newest jobs; results by node): the next page.
    #[arg(long, value_name = "N")]
    pub offset: Option<usize>,
    /// history: only this node's answers.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// history: only requests for this service.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// history: only requests since T: a time ago (30m, 12h, 7d, 2w) or a UTC date
    /// (2026-11-24, 2026-11-24T08:00, 2026-11-24T08:00:00).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// history: only requests signed by this client key (its name, key id or public key line).
    #[arg(long, value_name = "KEY")]
    pub client: Option<String>,
    /// Output format [default for the short names: table on a terminal, else json;
    /// full command names print the JSON reply, as 0.1 did].
    #[arg(long, value_enum)]
    pub format: Option<MgmtFormat>,
    #[command(flatten)]
    pub version: VersionFlag,
}

/// `service-mgr keygen`'s command line.
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

/// Commands that change something are signed when a key is at hand.
fn signed(cmd: &str) -> bool {
    cmd.ends_with(".shutdown") || cmd == p::MANAGER_FORGET
}

/// Whose management socket a command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Manager,
    Agent,
}

impl Daemon {
    pub fn of(cmd: &str) -> Daemon {
        if cmd.starts_with("agent.") {
            Daemon::Agent
        } else {
            Daemon::Manager
        }
    }
}

/// How to reach a daemon's management socket: CURVE to its pinned key
/// (`server_key`, else the local config's), proving the daemon's own key when
/// we can read it (root or the daemon's user on its host), else `client`'s.
pub fn wire(
    daemon: Daemon,
    endpoint: &str,
    server_key: Option<&str>,
    own_key_file: &std::path::Path,
    client: Option<&KeyPair>,
) -> Result<transport::Wire> {
    let own = KeyPair::load(own_key_file).ok();
    let role = match daemon {
        Daemon::Manager => Role::Manager,
        Daemon::Agent => Role::Agent,
    };
    // On the daemon's host with its key at hand: its public half is the pin
    // (unless the manager's key is named in the environment).
    let named = daemon == Daemon::Manager && std::env::var_os("SERVICE_MGR_MANAGER_KEY").is_some();
    let own_pin = own
        .as_ref()
        .filter(|k| k.role() == role && !named)
        .map(|k| k.public().clone());
    let server = match (daemon, server_key.map(str::trim), own_pin) {
        (_, Some(config::pin::PLAINTEXT), _) => return Ok(transport::Wire::Plain),
        (_, None, Some(pin)) => pin,
        (Daemon::Manager, setting, _) => match config::pin::manager_key(setting, endpoint)? {
            config::pin::ManagerKey::Plaintext => return Ok(transport::Wire::Plain),
            config::pin::ManagerKey::Pinned { key, .. } => *key,
        },
        (Daemon::Agent, Some(line), _) if line.starts_with(security::KEY_PREFIX) => line
            .parse()
            .context("--server-key is not a key line (smgr1 agent NAME KEY)")?,
        (Daemon::Agent, setting, _) => {
            let file = match setting {
                Some(path) => PathBuf::from(path),
                None => own_key_file.with_extension("key.pub"),
            };
            let text = std::fs::read_to_string(&file).with_context(|| {
                format!(
                    "no key for the agent at {endpoint}: cannot read {}; pass --server-key with the \
                     agent's agent.key.pub (or `plaintext` for a 0.1 agent)",
                    file.display()
                )
            })?;
            text.trim()
                .parse()
                .with_context(|| format!("{} is not a key line", file.display()))?
        }
    };
    // Our own daemon key proves who we are only to that daemon.
    let ours = own.as_ref().filter(|k| k.public() == &server).or(client);
    Ok(match ours {
        Some(k) => transport::Wire::curve(k, &server),
        None => transport::Wire::curve(&KeyPair::generate(Role::Client, "anonymous")?, &server),
    })
}

/// Send one management request and return the reply. A reply that is not
/// ours is kept as raw JSON so that a 0.1 peer's answer still prints.
pub fn call(
    endpoint: &str,
    wire: &transport::Wire,
    req: &MgmtRequest,
    timeout: Duration,
    retries: u32,
) -> Result<Value> {
    let ctx = zmq::Context::new();
    let reply = transport::request(&ctx, endpoint, wire, &p::encode(req), timeout, retries)?;
    serde_json::from_slice(&reply)
        .with_context(|| format!("the answer from {endpoint} is not JSON"))
}

/// An unsigned request for `cmd`.
pub fn call_cmd(
    endpoint: &str,
    wire: &transport::Wire,
    cmd: &str,
    timeout: Duration,
    retries: u32,
) -> Result<Value> {
    call(endpoint, wire, &MgmtRequest::new(cmd), timeout, retries)
}

/// A request for `cmd`, signed with `key` when the command needs it.
pub fn request(cmd: &str, key: Option<&KeyPair>, node: Option<&str>) -> MgmtRequest {
    let mut req = MgmtRequest::new(cmd);
    if let (true, Some(key)) = (signed(cmd), key) {
        let body = MgmtBody {
            cmd: cmd.to_owned(),
            id: uuid::Uuid::new_v4().simple().to_string(),
            ts: crate::clock::now_ms(),
            node: node.map(str::to_owned),
        };
        req.auth = Some(security::sign(key, Purpose::Request, &body));
    }
    req
}

/// A signed request for `cmd` at `endpoint`; an agent's shutdown is bound to
/// its node name, which it tells us first.
fn prepare(
    endpoint: &str,
    wire: &transport::Wire,
    cmd: &str,
    key: Option<&KeyPair>,
    timeout: Duration,
    retries: u32,
) -> Result<MgmtRequest> {
    let node = match (cmd, key) {
        (p::AGENT_SHUTDOWN, Some(_)) => {
            let status = call(
                endpoint,
                wire,
                &MgmtRequest::new(p::AGENT_STATUS),
                timeout,
                retries,
            )?;
            status["result"]["node"].as_str().map(str::to_owned)
        }
        _ => None,
    };
    Ok(request(cmd, key, node.as_deref()))
}

/// Whether a reply reports success (`"success": 0`).
pub fn succeeded(reply: &Value) -> bool {
    serde_json::from_value::<MgmtReply>(reply.clone()).is_ok_and(|r| r.success == 0)
}

/// Run a management command and print the reply as 0.1 did; true on success.
pub fn run_and_print(
    endpoint: &str,
    wire: &transport::Wire,
    cmd: &str,
    timeout: Duration,
    retries: u32,
    key: Option<&KeyPair>,
) -> Result<bool> {
    let reply = call(
        endpoint,
        wire,
        &prepare(endpoint, wire, cmd, key, timeout, retries)?,
        timeout,
        retries,
    )?;
    println!("{}", to_json_pretty(&reply));
    Ok(succeeded(&reply))
}

/// How a reply can be shown as a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Agents,
    Jobs,
    Job,
    History,
    Status,
}

/// `service-mgr mgmt ...`: short names (`status`, `agents`, `jobs`, `job ID`)
/// print a table on a terminal; full names print the JSON reply, as 0.1 did.
pub fn run(a: &MgmtArgs) -> Result<Exit> {
    if a.command == "keys" {
        return keys(a);
    }
    // `agents forget NODE` (or manager.forget NODE): the node to forget.
    let forget = match (a.command.as_str(), a.args.as_slice()) {
        ("agents", [verb, rest @ ..]) if verb == "forget" => Some(rest.first()),
        (p::MANAGER_FORGET, rest) => Some(rest.first()),
        _ => None,
    };
    let forget = match forget {
        Some(Some(node)) => Some(node.clone()),
        Some(None) => {
            eprintln!("service-mgr: usage: service-mgr mgmt agents forget NODE");
            return Ok(Exit::Usage);
        }
        None => None,
    };
    let (cmd, short) = match a.command.as_str() {
        _ if forget.is_some() => (p::MANAGER_FORGET, true),
        "status" => (p::MANAGER_STATUS, true),
        "agents" => (p::MANAGER_AGENTS, true),
        "jobs" => (p::MANAGER_JOBS, true),
        "job" => (p::MANAGER_JOB, true),
        "history" => (p::MANAGER_HISTORY, true),
        "shutdown" => (p::MANAGER_SHUTDOWN, true),
        other => (other, false),
    };
    let view = match cmd {
        p::MANAGER_AGENTS => Some(View::Agents),
        p::MANAGER_JOBS => Some(View::Jobs),
        p::MANAGER_JOB => Some(View::Job),
        p::MANAGER_HISTORY => Some(View::History),
        p::MANAGER_STATUS | p::AGENT_STATUS => Some(View::Status),
        _ => None,
    };
    let since_ms = match (&a.since, cmd) {
        (Some(t), p::MANAGER_HISTORY) => match parse_since(t, clock::now_ms()) {
            Ok(ms) => Some(ms),
            Err(why) => {
                eprintln!("service-mgr: --since {t:?}: {why}");
                return Ok(Exit::Usage);
            }
        },
        _ => None,
    };
    let key = config::load_client_key(a.key.as_deref())?;
    let timeout = Duration::from_millis(a.timeout);
    let daemon = Daemon::of(cmd);
    let own_key_file = match daemon {
        Daemon::Manager => manager_config(a)?.key_file(),
        Daemon::Agent => {
            config::load::<config::AgentConfig>(std::path::Path::new(config::AGENT_CONFIG), false)?
                .key_file()
        }
    };
    let wire = wire(
        daemon,
        &a.endpoint,
        a.server_key.as_deref(),
        &own_key_file,
        key.as_deref(),
    )?;
    let mut req = match &forget {
        // The signature binds the node forgotten.
        Some(node) => {
            let mut req = request(cmd, key.as_deref(), Some(node));
            req.node = Some(node.clone());
            req
        }
        None => prepare(&a.endpoint, &wire, cmd, key.as_deref(), timeout, a.retries)?,
    };
    if cmd == p::MANAGER_JOB {
        let Some(id) = a.args.first() else {
            eprintln!("service-mgr: usage: service-mgr mgmt job ID");
            return Ok(Exit::Usage);
        };
        req.uuid = Some(id.clone());
    }
    if matches!(cmd, p::MANAGER_JOBS | p::MANAGER_JOB | p::MANAGER_HISTORY) {
        req.limit = a.limit;
        req.offset = a.offset;
    }
    if cmd == p::MANAGER_HISTORY {
        req.node = a.node.clone();
        req.service = a.service.clone();
        req.since_ms = since_ms;
        req.client = a.client.clone();
    }
    let mut reply = call(&a.endpoint, &wire, &req, timeout, a.retries)?;
    let mut view = view;
    // The short names mean the manager's commands; an agent's endpoint
    // (ours or 0.1's) refuses them as unknown, having run nothing: ask again
    // with the agent's (issue 15).
    let agent_cmd = match cmd {
        p::MANAGER_STATUS => Some(p::AGENT_STATUS),
        p::MANAGER_SHUTDOWN => Some(p::AGENT_SHUTDOWN),
        _ => None,
    };
    if let (true, Some(agent_cmd)) = (short && unknown_command(&reply), agent_cmd) {
        let req = prepare(
            &a.endpoint,
            &wire,
            agent_cmd,
            key.as_deref(),
            timeout,
            a.retries,
        )?;
        let again = call(&a.endpoint, &wire, &req, timeout, a.retries)?;
        if !unknown_command(&again) {
            reply = again;
            view = view.filter(|_| agent_cmd == p::AGENT_STATUS);
        }
    }
    let ok = succeeded(&reply);
    let format = output::mgmt_format(a.format, short);
    // The table shows what ran; JSON stays the reply as the manager gave it.
    if let (true, MgmtFormat::Table, Some(View::Job), Some(key)) =
        (ok, format, view, key.as_deref())
    {
        open_results(
            &mut reply["result"],
            key,
            &a.endpoint,
            &wire,
            timeout,
            a.retries,
        );
    }
    match (format, view) {
        (MgmtFormat::Table, Some(view)) if ok => {
            print!(
                "{}",
                render(view, &reply["result"], clock::now_ms(), Style::stdout())
            );
            if let Some(next) = reply["next"].as_u64() {
                let what = match view {
                    View::Jobs => "jobs",
                    View::History => "entries",
                    _ => "results",
                };
                let args = a
                    .args
                    .first()
                    .map(|id| format!(" {id}"))
                    .unwrap_or_default();
                println!(
                    "more {what}: service-mgr mgmt -e {} {}{args} --offset {next}",
                    a.endpoint, a.command
                );
            }
        }
        (MgmtFormat::Table, _) if ok && forget.is_some() => {
            println!("{}", reply["msg"].as_str().unwrap_or("forgotten"));
        }
        (MgmtFormat::Table, _) if !ok => {
            let msg = reply["msg"].as_str().unwrap_or("no reason given");
            eprintln!("service-mgr: {} answered: {msg}", a.endpoint);
        }
        _ => println!("{}", to_json_pretty(&reply)),
    }
    if !ok && unknown_command(&reply) && cmd.starts_with("manager.") {
        // 0.1's manager knows two commands and says only "Uknown management command".
        let status = call_cmd(&a.endpoint, &wire, p::MANAGER_STATUS, timeout, a.retries);
        if status.is_ok_and(|s| succeeded(&s) && s["result"].get("version").is_none()) {
            eprintln!(
                "service-mgr: {} is a service-mgr 0.1 manager, which does not know {cmd}; \
                 it knows {} and {} (e.g. service-mgr mgmt -e {} status)",
                a.endpoint,
                p::MANAGER_STATUS,
                p::MANAGER_SHUTDOWN,
                a.endpoint
            );
        }
    }
    Ok(if ok { Exit::Ok } else { Exit::Error })
}

/// `mgmt job`: our agents seal their results to the client that asked. With
/// that client's key, open them, checked against the agent keys the manager
/// lists as a client checks them, so that the job shows what ran (issue 15:
/// SYSTEM, RC and TIME were `-`). What does not open or verify stays as stored.
fn open_results(
    job: &mut Value,
    key: &KeyPair,
    endpoint: &str,
    wire: &transport::Wire,
    timeout: Duration,
    retries: u32,
) {
    let Ok(agents) = call_cmd(endpoint, wire, p::MANAGER_AGENTS, timeout, retries) else {
        return;
    };
    let agent_keys = agents["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["node"].as_str()?.to_owned(),
                a["key"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let accepted = p::Accepted {
        uuid: job["uuid"].as_str().unwrap_or_default().to_owned(),
        port: 0,
        v: Some(p::PROTOCOL_VERSION),
        expected: None,
        unregistered: None,
        agent_keys: Some(agent_keys),
        pending_keys: None,
        near: None,
        attached: false,
        started_ms_ago: None,
    };
    let Some(results) = job.get_mut("results").and_then(Value::as_array_mut) else {
        return;
    };
    for r in results {
        let Some(obj) = r["result"].as_object().filter(|m| m.contains_key("auth")) else {
            continue;
        };
        let frame = p::ResultFrame::from_object(obj.clone());
        if let Ok(opened) = crate::client::verify_result(frame, &accepted, Some(key), None) {
            r["result"] = Value::Object(opened);
        }
    }
}

/// Whether a reply refuses a command as unknown: ours ("Unknown management
/// command ...") or 0.1's ("Uknown management command", sic).
fn unknown_command(reply: &Value) -> bool {
    !succeeded(reply)
        && reply["msg"]
            .as_str()
            .is_some_and(|m| m.to_ascii_lowercase().contains("known management command"))
}

/// The table of a reply's result, decoded into its type; a result of
/// another shape (another version's) is shown as JSON instead.
fn render(view: View, result: &Value, now_ms: u64, style: Style) -> String {
    fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
        T::deserialize(v).ok()
    }
    let shown = match view {
        View::Agents => typed::<Vec<AgentInfo>>(result).map(|list| {
            let pending: Vec<&str> = list
                .iter()
                .filter(|a| a.state == AgentState::Pending)
                .map(|a| a.node.as_str())
                .collect();
            let mut text = if list.is_empty() {
                "no agent has announced itself\n".to_owned()
            } else {
                output::agents_table(&list, now_ms).render(style)
            };
            if !pending.is_empty() {
                text.push_str(&format!(
                    "\n{} agent key{} pending: service-mgr mgmt keys accept {} (see service-mgr mgmt keys list)\n",
                    pending.len(),
                    if pending.len() == 1 { "" } else { "s" },
                    pending.join(" ")
                ));
            }
            text
        }),
        View::Jobs => typed::<Vec<JobSummary>>(result).map(|list| {
            if list.is_empty() {
                "no jobs\n".into()
            } else {
                output::jobs_table(&list, now_ms).render(style)
            }
        }),
        View::Job => typed::<JobRecord>(result).map(|job| output::job_view(&job, now_ms, style)),
        View::History => typed::<Vec<HistoryEntry>>(result).map(|list| {
            if list.is_empty() {
                "no history matches\n".into()
            } else {
                output::history_table(&list, now_ms).render(style)
            }
        }),
        View::Status => Some(output::status_view(result, style)),
    };
    shown.unwrap_or_else(|| format!("{}\n", to_json_pretty(result)))
}

/// `--since T`: a time ago (`30m`, `12h`, `7d`, `2w`, `90s`) or a UTC date
/// (`2026-11-24`, `2026-11-24T08:00`, `2026-11-24T08:00:00`), as unix ms.
pub fn parse_since(t: &str, now_ms: u64) -> Result<u64, String> {
    let form = "give a time ago (30m, 12h, 7d, 2w) or a UTC date (2026-11-24, 2026-11-24T08:00)";
    let ago = t
        .char_indices()
        .last()
        .filter(|(i, c)| c.is_ascii_alphabetic() && t[..*i].bytes().all(|b| b.is_ascii_digit()));
    if let Some((at, unit)) = ago {
        let n: u64 = t[..at].parse().map_err(|_| form.to_owned())?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(form.to_owned()),
        };
        return Ok(now_ms.saturating_sub(n.saturating_mul(secs).saturating_mul(1000)));
    }
    let (date, time) = t.split_once('T').unwrap_or((t, "00:00"));
    let num = |s: &str| s.parse::<u64>().map_err(|_| form.to_owned());
    let d: Vec<&str> = date.split('-').collect();
    let hms: Vec<&str> = time.trim_end_matches('Z').split(':').collect();
    let ([y, mo, da], [h, mi, rest @ ..]) = (d.as_slice(), hms.as_slice()) else {
        return Err(form.to_owned());
    };
    let (y, mo, da, h, mi) = (num(y)?, num(mo)?, num(da)?, num(h)?, num(mi)?);
    let sec = match rest {
        [] => 0,
        [s] => num(s)?,
        _ => return Err(form.to_owned()),
    };
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&da)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return Err(form.to_owned());
    }
    // Days from the civil date (Howard Hinnant's algorithm), 1970-01-01 = 0.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok((((days * 24 + h) * 60 + mi) * 60 + sec) * 1000)
}

/// `mgmt keys list|accept|reject|delete|import`: the manager's key store, edited
/// in place on the manager's host (the manager notices within a second).
/// The manager's config as `-f` (or the default file) says.
fn manager_config(a: &MgmtArgs) -> Result<ManagerConfig> {
    let (path, explicit) = match &a.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::MANAGER_CONFIG), false),
    };
    config::load::<ManagerConfig>(&path, explicit)
}

fn keys(a: &MgmtArgs) -> Result<Exit> {
    let dir = match &a.keys_dir {
        Some(d) => d.clone(),
        None => manager_config(a)?.state_dir().join("keys"),
    };
    let op = a.args.first().map(String::as_str).unwrap_or("list");
    // Listing writes nothing, so it works where the store is not ours to write.
    let mut store = if op == "list" {
        KeyStore::open_read(&dir)?
    } else {
        KeyStore::open(&dir)?
    };
    let sel = a.args.get(1).map(String::as_str);
    let need = || {
        sel.with_context(|| format!("usage: service-mgr mgmt keys {op} FINGERPRINT|NAME|KEY-ID"))
    };
    match op {
        "list" => print!("{}", list_keys(&store, clock::now_ms())),
        "accept" if a.force => {
            let (key, replaced) = store.accept_replacing(need()?)?;
            for old in replaced {
                println!("rejected {old} (replaced: one key per node)");
            }
            println!("accepted {key}");
        }
        "accept" => println!("accepted {}", store.accept(need()?)?),
        "reject" => println!("rejected {}", store.reject(need()?)?),
        "delete" => println!("deleted {}", store.delete(need()?)?),
        "import" => {
            let file = std::path::Path::new(need()?);
            let accepted = if a.force {
                store.import_replacing(file)?
            } else {
                store.import_accepted(file)?
            };
            for k in accepted {
                println!("accepted {k}");
            }
        }
        other => {
            bail!("unknown keys command {other:?}; use list, accept, reject, delete or import")
        }
    }
    Ok(Exit::Ok)
}

/// `mgmt keys list`: one line per key (state, fingerprint, key line), an
/// agent key whose node name another accepted key holds marked as a name
/// clash; then how many unknown keys the manager turned away, if any.
fn list_keys(store: &KeyStore, now_ms: u64) -> String {
    let mut text = String::new();
    for (state, key) in store.list() {
        text.push_str(&format!(
            "{:<9} {} {}",
            state.as_str(),
            key.fingerprint(),
            key
        ));
        let held: Vec<String> = store
            .name_clash(&key)
            .iter()
            .map(|k| k.fingerprint())
            .collect();
        match state {
            _ if held.is_empty() => {}
            KeyState::Pending => text.push_str(&format!(
                "  [NAME CLASH: node {:?} is held by accepted key {}; accept only with --force]",
                key.name(),
                held.join(", ")
            )),
            KeyState::Accepted => text.push_str(&format!(
                "  [NAME CLASH: node {:?} has other accepted keys: {}; neither is served until one is rejected]",
                key.name(),
                held.join(", ")
            )),
            KeyState::Rejected => {}
        }
        text.push('\n');
    }
    if let Some(t) = store.read_turned_away().filter(|t| t.total > 0) {
        text.push_str(&format!(
            "turned away: {} unknown key{} since the manager started {} ({}); last {} from {} (see the manager log)\n",
            t.total,
            if t.total == 1 { "" } else { "s" },
            output::ago(now_ms.saturating_sub(t.since_ms)),
            t.breakdown(),
            output::ago(now_ms.saturating_sub(t.last_ms)),
            t.last_source
        ));
    }
    text
}

/// `service-mgr keygen`
pub fn keygen(a: &KeygenArgs) -> Result<Exit> {
    let role: Role = a.role.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let host = crate::host::HostInfo::read().node;
    let name = a.name.clone().unwrap_or_else(|| match role {
        Role::Client => format!(
            "{}@{host}",
            std::env::var("USER").unwrap_or_else(|_| "client".into())
        ),
        _ => host.clone(),
    });
    let path = a.output.clone().unwrap_or_else(|| match role {
        Role::Client => config::default_client_key(),
        Role::Agent => config::default_config_dir().join("agent.key"),
        Role::Manager => config::default_config_dir().join("manager.key"),
    });
    let pk = security::keygen(&path, role, &name, a.force)?;
    eprintln!(
        "secret key: {} (mode 0600); public key: {}.pub",
        path.display(),
        path.display()
    );
    println!("{pk}");
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_takes_a_time_ago_or_a_utc_date() {
        let now = 1_795_478_400_000; // 2026-11-24T00:00:00Z
        assert_eq!(parse_since("2026-11-24", now), Ok(now));
        assert_eq!(parse_since("2000-02-29T08:30:05", now), Ok(951_813_005_000));
        assert_eq!(
            parse_since("2000-02-29T08:30:05Z", now),
            Ok(951_813_005_000)
        );
        assert_eq!(parse_since("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_since("90s", now), Ok(now - 90_000));
        assert_eq!(parse_since("2w", now), Ok(now - 14 * 86_400_000));
        for bad in [
            "",
            "7",
            "7y",
            "d",
            "2026-13-01",
            "2026-11",
            "yesterday",
            "2026-11-24T25:00",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
