//! The Prometheus endpoints (`metrics_endpoint`) of the real manager and
//! agent, scraped over HTTP; the text checked by the parser and by
//! `promtool check metrics` where it is installed; the Grafana dashboard
//! checked against what the manager really exports.

use crate::util::*;
use prometheus_parse::{Scrape, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `GET /metrics` at `addr` (`HOST:PORT`); the body, after checking the status and content type.
fn scrape_text(addr: &str) -> String {
    let mut tcp = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("cannot connect to metrics_endpoint {addr}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(tcp, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("the metrics do not parse: {e}\n{text}"))
}

/// The value of the counter, gauge or plain sample `metric` with `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// The names of every series in the text (`name{labels} value` lines).
fn series_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// `promtool check metrics` on `text`, when promtool is on PATH or `$PROMTOOL`
/// names it (.ci/run fetches it); skipped with a message otherwise.
fn promtool_check(what: &str, text: &str) {
    let tool = match std::env::var_os("PROMTOOL") {
        Some(p) => PathBuf::from(p),
        None => match std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
        {
            Some(p) => p,
            None => {
                eprintln!(
                    "promtool not found (not on PATH, PROMTOOL not set): skipping `promtool check metrics` \
                     of the {what}; .ci/run fetches it"
                );
                return;
            }
        },
    };
    let mut child = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} (PROMTOOL): {e}", tool.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = output_of(child);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics rejects the {what}'s metrics ({}):\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

fn output_of(child: std::process::Child) -> std::process::Output {
    child.wait_with_output().unwrap()
}

/// The check: a manager and an agent with metrics on, one request,
/// and the numbers an operator watches are there, in a format Prometheus reads.
#[test]
fn a_request_shows_in_the_managers_and_agents_metrics() {
    with_timeout(90, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&["-O", "metrics_endpoint=127.0.0.1:0"]);
        let agent = agent(&mgr, "web1", &fake, &["-O", "metrics_endpoint=127.0.0.1:0"]);
        // And one whose own new key waits for `mgmt keys accept`.
        let key_opt = format!(
            "key_file={}",
            toml_str(&dir.path().join("newnode.key").display().to_string())
        );
        let _newcomer = agent_unregistered(&mgr, "newnode", &fake, &["-O", &key_opt]);
        let at = mgr.ep("metrics_endpoint");
        assert!(at.starts_with("127.0.0.1:") && !at.ends_with(":0"), "{at}");
        let status = mgmt(&mgr.ep("mgmt_endpoint"), "manager.status");
        assert_eq!(status["result"]["bound"]["metrics_endpoint"], at.as_str());

        let (out, _) = Client::new(&mgr)
            .topic("web1")
            .cmd("status")
            .service("nginx")
            .run();
        assert_eq!(out.status.code(), Some(0));

        // The gauges are recomputed once a second.
        let text = wait_for(
            20,
            "the manager's metrics to count one agent up, one pending",
            || {
                let text = scrape_text(&at);
                let m = parse(&text);
                let agents = |state| value(&m, "service_mgr_agents", &[("state", state)]);
                (agents("up") == Some(1.0) && agents("pending") == Some(1.0)).then_some(text)
            },
        );
        let m = parse(&text);
        let get = |metric: &str, labels: &[(&str, &str)]| {
            value(&m, metric, labels).unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{text}"))
        };
        assert_eq!(
            get("service_mgr_requests_total", &[("outcome", "accepted")]),
            1.0
        );
        assert_eq!(
            get("service_mgr_requests_total", &[("outcome", "refused")]),
            0.0
        );
        assert_eq!(get("service_mgr_results_total", &[("status", "ok")]), 1.0);
        assert_eq!(get("service_mgr_result_latency_seconds_count", &[]), 1.0);
        assert_eq!(get("service_mgr_agents", &[("state", "lost")]), 0.0);
        assert_eq!(
            get(
                "service_mgr_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
        assert!(get("service_mgr_job_store_bytes", &[]) > 0.0, "{text}");
        let lag = get("service_mgr_job_store_write_lag_seconds", &[]);
        assert!((0.0..5.0).contains(&lag), "{text}");
        promtool_check("manager", &text);

        let agent_at = agent.ep("metrics_endpoint");
        let text = scrape_text(&agent_at);
        let a = parse(&text);
        assert_eq!(
            value(
                &a,
                "service_mgr_agent_commands_total",
                &[("command", "status"), ("outcome", "ok")]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &a,
                "service_mgr_agent_command_duration_seconds_count",
                &[("command", "status")]
            ),
            Some(1.0),
            "{text}"
        );
        promtool_check("agent", &text);
    });
}

/// Requests refused by the gate and requests that are not valid count apart.
#[test]
fn refused_and_invalid_requests_are_counted_by_outcome() {
    with_timeout(60, || {
        let mgr = manager(&["-O", "metrics_endpoint=127.0.0.1:0"]);
        // Unsigned, to a manager that serves signed requests only.
        let out = Client::new(&mgr)
            .unsigned()
            .topic("any")
            .cmd("status")
            .service("nginx")
            .output();
        assert_ne!(out.status.code(), Some(0));
        let reply = req_raw(&mgr.ep("frontend_endpoint"), b"not json");
        assert!(String::from_utf8_lossy(&reply).contains("\"success\":-1"));
        let m = parse(&scrape_text(&mgr.ep("metrics_endpoint")));
        let requests = |outcome| value(&m, "service_mgr_requests_total", &[("outcome", outcome)]);
        assert_eq!(requests("refused"), Some(1.0));
        assert_eq!(requests("invalid"), Some(1.0));
        assert_eq!(requests("accepted"), Some(0.0));
        assert_eq!(
            value(&m, "service_mgr_refusals_total", &[("reason", "request")]),
            Some(1.0)
        );
    });
}

fn manager_args(state: &Path, metrics: &str) -> Vec<String> {
    let mut args: Vec<String> = ["daemon", "-f", "/dev/null"].map(String::from).to_vec();
    for key in MANAGER_ENDPOINTS {
        args.extend(["-O".into(), format!("{key}={LOOPBACK}")]);
    }
    args.extend([
        "-O".into(),
        format!("state_dir={}", toml_str(&state.display().to_string())),
        "-O".into(),
        format!("metrics_endpoint={metrics}"),
    ]);
    args
}

/// A metrics_endpoint that is taken or malformed stops the manager with an
/// error that names the setting, and a non-loopback one is warned about.
#[test]
fn a_bad_or_taken_metrics_endpoint_names_the_setting() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = taken.local_addr().unwrap().to_string();
        for (endpoint, want) in [
            (taken.as_str(), "cannot bind metrics_endpoint"),
            ("http://127.0.0.1:9550/metrics", "metrics_endpoint"),
            ("9550", "metrics_endpoint"),
        ] {
            let args = manager_args(&dir.path().join("state"), endpoint);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{endpoint}: {err}");
            assert!(err.contains(want), "{endpoint}: {err}");
        }

        let args = manager_args(&dir.path().join("state"), "0.0.0.0:0");
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.push("-D");
        let mgr = spawn_ready(&args);
        let log = wait_for(10, "the unauthenticated-endpoint warning", || {
            Some(mgr.log_text()).filter(|t| t.contains("unauthenticated"))
        });
        assert!(log.contains("metrics_endpoint"), "{log}");
    });
}

/// Every query of contrib/grafana/service-mgr.json names series the manager
/// really exports, and the dashboard shows each of the numbers.
#[test]
fn the_grafana_dashboard_queries_exported_metrics() {
    with_timeout(60, || {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana/service-mgr.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
        let mut exprs = Vec::new();
        collect_exprs(&dashboard, &mut exprs);
        assert!(!exprs.is_empty(), "no queries in {}", path.display());

        let mgr = manager(&["-O", "metrics_endpoint=127.0.0.1:0"]);
        let exported = series_names(&scrape_text(&mgr.ep("metrics_endpoint")));
        let mut used = BTreeSet::new();
        for expr in &exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "query {expr:?} names no metric");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "query {expr:?} uses {name}, which the manager does not export: {exported:?}"
                );
                used.insert(name);
            }
        }
        for wanted in [
            "service_mgr_agents",
            "service_mgr_requests_total",
            "service_mgr_results_total",
            "service_mgr_result_latency_seconds_bucket",
            "service_mgr_refusals_total",
            "service_mgr_job_store_bytes",
            "service_mgr_job_store_write_lag_seconds",
        ] {
            assert!(
                used.contains(wanted),
                "the dashboard does not show {wanted}"
            );
        }
    });
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `service_mgr_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("service_mgr_"))
        .map(str::to_owned)
        .collect()
}
