//! The numbers operators watch: Prometheus metrics of the manager (and,
//! optionally, the agent), served over HTTP on `metrics_endpoint`.
//!
//! Off by default. The handles are cheap atomics the daemon's loop updates in
//! place; encoding happens on the HTTP thread, so a scrape never stalls the
//! loop. Label values are a small fixed vocabulary (states, outcomes, statuses,
//! reasons), never user strings, so a stranger cannot grow the series.

use anyhow::{bail, Context, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// Every metric name starts with this.
const PREFIX: &str = "service_mgr";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultStatus {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: &'static str,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Command {
    command: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandOnly {
    command: String,
}

/// Result statuses we label by (those of `protocol::Status`); anything else counts as `other`.
const STATUSES: [&str; 6] = [
    "ok",
    "failed",
    "timeout",
    "refused",
    "no_response",
    "interrupted",
];
/// The commands an agent runs; anything else counts as `other`.
const COMMANDS: [&str; 5] = ["start", "stop", "restart", "reload", "status"];

fn known<'a>(value: &str, vocabulary: &[&'a str]) -> &'a str {
    vocabulary
        .iter()
        .find(|v| **v == value)
        .copied()
        .unwrap_or("other")
}

/// Latency buckets from 1 ms to about 65 s, doubling. Spelled out rather than
/// `exponential_buckets(0.001, 2.0, 17)`, whose `powf` was the binary's only
/// use of libm: the same values, and one shared library less mapped into
/// every process (about 0.45 MiB of an idle agent's RSS).
fn latency_buckets() -> Histogram {
    Histogram::new(latency_bounds())
}

fn latency_bounds() -> impl Iterator<Item = f64> {
    (0..17).map(|i| 0.001 * f64::from(1u32 << i))
}

/// The manager's metrics: cloned handles into one registry.
#[derive(Clone)]
pub struct ManagerMetrics {
    registry: Arc<Registry>,
    agents: Family<State, Gauge>,
    requests: Family<Outcome, Counter>,
    results: Family<ResultStatus, Counter>,
    latency: Histogram,
    store_bytes: Gauge,
    store_lag: Gauge<f64, AtomicU64>,
    refusals: Family<Reason, Counter>,
}

/// Agent states, as `service-mgr mgmt agents` shows them (`connecting`:
/// announced, but its subscriptions are not in place yet, so not a target;
/// `pending`: its key waits for `mgmt keys accept`; `clock_skew`: its key is
/// accepted but its announcements are refused for its clock).
pub const AGENT_STATES: [&str; 6] = [
    "up",
    "connecting",
    "pending",
    "clock_skew",
    "lost",
    "stopped",
];

/// What became of a client's service request (`requests_total{outcome}`).
pub mod outcome {
    /// Published to at least one node (or, in 0.1-compatible mode, to a topic with 0.1 subscribers).
    pub const ACCEPTED: &str = "accepted";
    /// Valid and allowed, but no node matched: nobody to ask.
    pub const NO_TARGET: &str = "no_target";
    /// `--dry-run`: answered with who would be asked; nothing was sent.
    pub const DRY_RUN: &str = "dry_run";
    /// A client's retry of signed bytes already accepted: answered as before.
    pub const REPEATED: &str = "repeated";
    /// The gate refused it (signature, key, window, replay); see `refusals_total`.
    pub const REFUSED: &str = "refused";
    /// Not a valid request (frame, JSON, topic, service or command word, glob).
    pub const INVALID: &str = "invalid";
    /// Valid, but the manager could not publish it.
    pub const ERROR: &str = "error";
    pub const ALL: [&str; 7] = [
        ACCEPTED, NO_TARGET, DRY_RUN, REPEATED, REFUSED, INVALID, ERROR,
    ];
}

/// What the manager refused (`refusals_total{reason}`).
pub mod refused {
    /// A client request the gate refused (unsigned, unknown key, bad signature, outside the window).
    pub const REQUEST: &str = "request";
    /// Signed bytes seen before, with no earlier answer to give again.
    pub const REPLAY: &str = "replay";
    /// An agent's announcement (hello, heartbeat, bye) not admitted.
    pub const ANNOUNCE: &str = "announce";
    /// A result whose signature or sender did not check out.
    pub const RESULT: &str = "result";
    /// An agent's presence token not granted (unsigned, stale or key not accepted).
    pub const PRESENCE: &str = "presence";
    /// A `manager.shutdown` the gate did not allow.
    pub const SHUTDOWN: &str = "shutdown";
    /// A sink message that did not decode.
    pub const MALFORMED: &str = "malformed";
    pub const ALL: [&str; 7] = [
        REQUEST, REPLAY, ANNOUNCE, RESULT, PRESENCE, SHUTDOWN, MALFORMED,
    ];
}

impl ManagerMetrics {
    pub fn new() -> ManagerMetrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let agents = Family::<State, Gauge>::default();
        let requests = Family::<Outcome, Counter>::default();
        let results = Family::<ResultStatus, Counter>::default();
        let latency = latency_buckets();
        let store_bytes = Gauge::default();
        let store_lag = Gauge::<f64, AtomicU64>::default();
        let refusals = Family::<Reason, Counter>::default();
        let build = Family::<Build, Gauge>::default();
        registry.register(
            "agents",
            "Agents the manager knows, by state",
            agents.clone(),
        );
        registry.register("requests", "Client requests, by outcome", requests.clone());
        registry.register(
            "results",
            "Results received from agents, by status",
            results.clone(),
        );
        registry.register(
            "result_latency_seconds",
            "Time from dispatching a request to each node's result",
            latency.clone(),
        );
        registry.register(
            "job_store_bytes",
            "Size of the job store on disk",
            store_bytes.clone(),
        );
        registry.register(
            "job_store_write_lag_seconds",
            "Age of the oldest job store event not yet safely on disk (0: all synced)",
            store_lag.clone(),
        );
        registry.register(
            "refusals",
            "Messages and connections refused, by reason",
            refusals.clone(),
        );
        registry.register(
            "build_info",
            "Version of this manager (always 1)",
            build.clone(),
        );
        build
            .get_or_create(&Build {
                version: env!("CARGO_PKG_VERSION"),
                protocol: "2",
            })
            .set(1);
        // Every label value of the fixed vocabularies from the start, so that
        // rate() and the dashboard see a 0 rather than no series at all.
        for state in AGENT_STATES {
            agents.get_or_create(&State { state }).set(0);
        }
        for outcome in outcome::ALL {
            let _ = requests.get_or_create(&Outcome { outcome });
        }
        for reason in refused::ALL {
            let _ = refusals.get_or_create(&Reason { reason });
        }
        for status in STATUSES {
            let _ = results.get_or_create(&ResultStatus {
                status: status.to_owned(),
            });
        }
        ManagerMetrics {
            registry: Arc::new(registry),
            agents,
            requests,
            results,
            latency,
            store_bytes,
            store_lag,
            refusals,
        }
    }

    /// How many agents are in `state` (one of [`AGENT_STATES`]).
    pub fn set_agents(&self, state: &'static str, count: usize) {
        self.agents
            .get_or_create(&State { state })
            .set(count as i64);
    }

    /// One client request and what became of it (one of [`outcome`]).
    pub fn request(&self, outcome: &'static str) {
        self.requests.get_or_create(&Outcome { outcome }).inc();
    }

    /// One result with its status, and how long after dispatch it came.
    pub fn result(&self, status: &str, after: Option<Duration>) {
        let status = known(status, &STATUSES).to_owned();
        self.results.get_or_create(&ResultStatus { status }).inc();
        if let Some(after) = after {
            self.latency.observe(after.as_secs_f64());
        }
    }

    /// Something refused, with a fixed reason word (one of [`refused`]).
    pub fn refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&Reason { reason }).inc();
    }

    /// The job store's size on disk.
    pub fn job_store_bytes(&self, bytes: u64) {
        self.store_bytes.set(bytes.try_into().unwrap_or(i64::MAX));
    }

    /// Age of the oldest job store event not yet safely on disk.
    pub fn job_store_lag(&self, write_lag: Duration) {
        self.store_lag.set(write_lag.as_secs_f64());
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

impl Default for ManagerMetrics {
    fn default() -> Self {
        ManagerMetrics::new()
    }
}

/// The agent's metrics: commands run, by outcome, and how long they took.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Arc<Registry>,
    commands: Family<Command, Counter>,
    duration: Family<CommandOnly, Histogram, fn() -> Histogram>,
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let commands = Family::<Command, Counter>::default();
        let duration = Family::<CommandOnly, Histogram>::new_with_constructor(
            latency_buckets as fn() -> Histogram,
        );
        registry.register(
            "agent_commands",
            "Service commands run, by outcome",
            commands.clone(),
        );
        registry.register(
            "agent_command_duration_seconds",
            "How long service commands took",
            duration.clone(),
        );
        AgentMetrics {
            registry: Arc::new(registry),
            commands,
            duration,
        }
    }

    /// One result the agent sent: its command, status and duration.
    pub fn record(&self, r: &crate::protocol::ResultMsg) {
        let outcome = r.status.map_or("other", |s| s.as_str());
        let took = Duration::from_millis(r.duration_ms.unwrap_or(0));
        self.command(r.cmd.as_deref().unwrap_or("other"), outcome, took);
    }

    /// One command run (`start`, ...), its outcome (`ok`, `failed`, `timeout`, `refused`) and duration.
    pub fn command(&self, command: &str, outcome: &'static str, took: Duration) {
        let command = known(command, &COMMANDS).to_owned();
        self.commands
            .get_or_create(&Command {
                command: command.clone(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&CommandOnly { command })
            .observe(took.as_secs_f64());
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

/// The registry in the Prometheus text format (0.0.4).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// Parse `metrics_endpoint`: `HOST:PORT`, or `:PORT` for loopback.
pub fn parse_endpoint(endpoint: &str) -> Result<SocketAddr> {
    let spec = match endpoint.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => endpoint.to_owned(),
    };
    let bad = || {
        format!("metrics_endpoint {endpoint:?} is not HOST:PORT (e.g. 127.0.0.1:9550, or :9550 for loopback)")
    };
    if spec.contains("://") || spec.contains('/') {
        bail!("{}", bad());
    }
    spec.to_socket_addrs()
        .with_context(bad)?
        .next()
        .with_context(bad)
}

/// Serve `registry` on `endpoint` unless it is empty (metrics off); warn when
/// it is reachable from other hosts, since nothing authenticates a scraper.
pub fn serve(
    endpoint: &str,
    registry: Arc<Registry>,
    log: &slog::Logger,
) -> Result<Option<Server>> {
    if endpoint.is_empty() {
        return Ok(None);
    }
    let server = Server::start(endpoint, registry)?;
    let addr = server.addr();
    if addr.ip().is_loopback() {
        slog::info!(log, "metrics served"; "metrics_endpoint" => %addr);
    } else {
        slog::warn!(log, "metrics served beyond this host, unauthenticated: anyone who reaches metrics_endpoint reads them; prefer a loopback address behind a proxy or firewall";
            "metrics_endpoint" => %addr);
    }
    Ok(Some(server))
}

/// The HTTP server of `/metrics`; dropping it stops its thread.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Bind `endpoint` and serve `registry` on `GET /metrics` from a thread.
    pub fn start(endpoint: &str, registry: Arc<Registry>) -> Result<Server> {
        let wanted = parse_endpoint(endpoint)?;
        let http = tiny_http::Server::http(wanted).map_err(|e| {
            anyhow::anyhow!(
                "cannot bind metrics_endpoint {endpoint:?} ({wanted}): {e}; is another program using the port? \
                 choose another metrics_endpoint, or leave it empty to turn metrics off"
            )
        })?;
        let addr = http
            .server_addr()
            .to_ip()
            .context("metrics_endpoint is not an IP socket")?;
        let http = Arc::new(http);
        let serving = http.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    respond(request, &registry);
                }
            })
            .context("cannot start the metrics thread")?;
        Ok(Server {
            http,
            addr,
            thread: Some(thread),
        })
    }

    /// The address really bound (with the port when it was 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn respond(request: tiny_http::Request, registry: &Registry) {
    use tiny_http::{Header, Method, Response};
    let path = request.url().split('?').next().unwrap_or_default();
    let response = match (request.method(), path) {
        (Method::Get, "/metrics") => Response::from_string(encode(registry)).with_header(
            Header::from_bytes("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                .expect("a valid header"),
        ),
        (Method::Get, _) => {
            Response::from_string("not found: try /metrics\n").with_status_code(404)
        }
        _ => Response::from_string("only GET\n").with_status_code(405),
    };
    // A scraper that hung up is its own problem.
    let _ = request.respond(response);
}

impl Drop for Server {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spelled-out latency buckets are exactly the ones the exporter had.
    #[test]
    fn latency_bounds_are_the_exponential_buckets() {
        let ours: Vec<f64> = latency_bounds().collect();
        let theirs: Vec<f64> =
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17).collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint(":9550").unwrap().to_string(),
            "127.0.0.1:9550"
        );
        assert_eq!(parse_endpoint("127.0.0.1:0").unwrap().port(), 0);
        assert_eq!(
            parse_endpoint("[::1]:9550").unwrap().to_string(),
            "[::1]:9550"
        );
        for bad in [
            "http://127.0.0.1:9550",
            "9550",
            "127.0.0.1",
            "127.0.0.1:9550/metrics",
            "",
        ] {
            let err = parse_endpoint(bad).unwrap_err().to_string();
            assert!(err.contains("metrics_endpoint"), "{bad}: {err}");
        }
    }

    #[test]
    fn labels_stay_in_a_fixed_vocabulary() {
        let m = ManagerMetrics::new();
        m.result("ok", Some(Duration::from_millis(3)));
        m.result("\u{1b}[31mevil", None);
        m.set_agents("up", 3);
        m.request("accepted");
        m.refusal("unknown_key");
        let text = encode(&m.registry());
        assert!(
            text.contains("service_mgr_results_total{status=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("service_mgr_results_total{status=\"other\"} 1"),
            "{text}"
        );
        assert!(!text.contains("evil"));
        assert!(
            text.contains("service_mgr_agents{state=\"up\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("service_mgr_agents{state=\"lost\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("service_mgr_result_latency_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("service_mgr_build_info{"), "{text}");

        let a = AgentMetrics::new();
        a.command("restart", "ok", Duration::from_millis(20));
        a.command("rm -rf", "refused", Duration::ZERO);
        let text = encode(&a.registry());
        assert!(
            text.contains("service_mgr_agent_commands_total{command=\"restart\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("command=\"other\""), "{text}");
        assert!(
            text.contains(
                "service_mgr_agent_command_duration_seconds_count{command=\"restart\"} 1"
            ),
            "{text}"
        );
    }

    fn get(addr: SocketAddr, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        write!(tcp, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    #[test]
    fn served_over_http_in_a_format_prometheus_parses() {
        let m = ManagerMetrics::new();
        m.result("failed", Some(Duration::from_millis(40)));
        let server = Server::start("127.0.0.1:0", m.registry()).unwrap();
        let (head, body) = get(server.addr(), "/metrics");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the text format parses");
        let failed = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "service_mgr_results_total" && s.labels.get("status") == Some("failed")
            })
            .expect("the failed result is there");
        assert!(matches!(failed.value, prometheus_parse::Value::Counter(v) if v == 1.0));
        let (head, _) = get(server.addr(), "/other");
        assert!(head.contains(" 404"), "{head}");
        drop(server); // joins its thread
    }

    #[test]
    fn empty_endpoint_is_off_and_a_taken_port_names_the_setting() {
        let log = slog::Logger::root(slog::Discard, slog::o!());
        assert!(serve("", ManagerMetrics::new().registry(), &log)
            .unwrap()
            .is_none());
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = taken.local_addr().unwrap().to_string();
        let err = serve(&at, ManagerMetrics::new().registry(), &log)
            .err()
            .expect("the port is taken")
            .to_string();
        assert!(err.contains("cannot bind metrics_endpoint"), "{err}");
    }

    #[test]
    fn build_info_names_the_protocol_version() {
        let text = encode(&ManagerMetrics::new().registry());
        let want = format!("protocol=\"{}\"", crate::protocol::PROTOCOL_VERSION);
        assert!(text.contains(&want), "{text}");
    }
}
