//! Output for people: tables, colour, the live count while waiting.
//!
//! Machines get JSON (`--format json|jsonl|legacy`); on a terminal the client
//! and `mgmt` print tables instead. Colour only ever goes to a terminal and
//! never when `NO_COLOR` is set (<https://no-color.org>). Text that came from
//! a node is cleaned of control characters before it reaches the terminal.

use crate::protocol::mgmt::{AgentInfo, AgentState, JobRecord, JobSummary};
use crate::protocol::Status;
use crate::report::{NodeResult, Report, Summary};
use clap::ValueEnum;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{IsTerminal, Write};

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

/// How `mgmt` prints the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MgmtFormat {
    /// A table for people.
    Table,
    /// The reply as JSON, as 0.1 printed it.
    Json,
}

/// Width used when stdout is not a terminal and `COLUMNS` does not say.
const DEFAULT_WIDTH: usize = 100;

/// The client's format when none is given: a table for a person; for a
/// pipe, 0.1's array as `service-mgr-client` (0.1 scripts keep working) and
/// the JSON document as `service-mgr client`.
pub fn client_format(chosen: Option<Format>, legacy_name: bool) -> Format {
    chosen.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else if legacy_name {
        Format::Legacy
    } else {
        Format::Json
    })
}

/// `mgmt`'s format when none is given: short names print a table on a
/// terminal; full command names print JSON as 0.1 did.
pub fn mgmt_format(chosen: Option<MgmtFormat>, short_name: bool) -> MgmtFormat {
    chosen.unwrap_or(if short_name && std::io::stdout().is_terminal() {
        MgmtFormat::Table
    } else {
        MgmtFormat::Json
    })
}

/// Whether to colour: on a terminal, unless `NO_COLOR` is set and not empty.
pub fn color_enabled(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// How to draw on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
    /// Columns available for a table row.
    pub width: usize,
}

impl Style {
    /// Colour and width of this process's stdout.
    pub fn stdout() -> Style {
        let tty = std::io::stdout().is_terminal();
        Style {
            color: color_enabled(tty, std::env::var_os("NO_COLOR").as_deref()),
            width: terminal_width(tty).unwrap_or(DEFAULT_WIDTH),
        }
    }

    /// No colour, a fixed width (tests, files).
    pub fn plain(width: usize) -> Style {
        Style {
            color: false,
            width,
        }
    }
}

/// Columns of the terminal on stdout, else `COLUMNS`.
fn terminal_width(tty: bool) -> Option<usize> {
    if tty {
        // SAFETY: TIOCGWINSZ fills a winsize struct we own; nothing else is touched.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0
            && ws.ws_col > 0
        {
            return Some(ws.ws_col as usize);
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|c| *c > 0)
}

/// What a cell's colour says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Bad,
    Warn,
    Dim,
}

impl Tone {
    /// The tone of a node's status.
    pub fn of_status(status: &str) -> Tone {
        match status {
            "ok" | "up" | "running" => Tone::Good,
            "failed" | "timeout" | "interrupted" | "refused" | "unverified" | "lost"
            | "clock_skew" => Tone::Bad,
            "no_response" | "skipped" | "pending" | "connecting" | "stopped" => Tone::Warn,
            _ => Tone::Plain,
        }
    }

    fn sgr(self) -> Option<&'static str> {
        match self {
            Tone::Plain => None,
            Tone::Good => Some("32"),
            Tone::Bad => Some("31"),
            Tone::Warn => Some("33"),
            Tone::Dim => Some("2"),
        }
    }
}

/// `text` in `tone`'s colour when colour is on.
pub fn paint(text: &str, tone: Tone, color: bool) -> String {
    match (color, tone.sgr()) {
        (true, Some(code)) => format!("\x1b[{code}m{text}\x1b[0m"),
        _ => text.to_owned(),
    }
}

/// Text from a node, safe to print: control characters (escape sequences,
/// carriage returns) become `?`, tabs a space.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

/// At most `width` characters, the cut marked with `…`.
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// A table: a header row, rows of cells, columns padded to their widest cell.
/// When a row is wider than the terminal, the columns marked `shrink` give up
/// room first (longest first), down to a few characters each.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    shrink: Vec<bool>,
    right: Vec<bool>,
    rows: Vec<Vec<(String, Tone)>>,
}

const MIN_SHRUNK: usize = 8;
const GAP: &str = "  ";

impl Table {
    /// Columns by header; a header starting with `>` is right-aligned, one
    /// ending with `~` may be shrunk to fit (neither mark is printed).
    pub fn new(headers: &[&'static str]) -> Table {
        let right = headers.iter().map(|h| h.starts_with('>')).collect();
        let shrink = headers.iter().map(|h| h.ends_with('~')).collect();
        let headers = headers
            .iter()
            .map(|h| h.trim_start_matches('>').trim_end_matches('~'))
            .collect();
        Table {
            headers,
            shrink,
            right,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<(String, Tone)>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(
            cells
                .into_iter()
                .map(|(text, tone)| (clean(&text), tone))
                .collect(),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Column widths that fit `width` if the shrinkable columns allow it.
    fn widths(&self, width: usize) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (text, _)) in row.iter().enumerate() {
                w[i] = w[i].max(text.chars().count());
            }
        }
        let total = |w: &[usize]| w.iter().sum::<usize>() + GAP.len() * w.len().saturating_sub(1);
        while total(&w) > width {
            let widest = (0..w.len())
                .filter(|&i| self.shrink[i] && w[i] > MIN_SHRUNK)
                .max_by_key(|&i| w[i]);
            let Some(i) = widest else { break };
            let over = total(&w) - width;
            w[i] = w[i].saturating_sub(over).max(MIN_SHRUNK);
        }
        w
    }

    pub fn render(&self, style: Style) -> String {
        let widths = self.widths(style.width);
        let mut out = String::new();
        let header: Vec<(String, Tone)> = self
            .headers
            .iter()
            .map(|h| (h.to_string(), Tone::Plain))
            .collect();
        for (n, row) in std::iter::once(&header).chain(&self.rows).enumerate() {
            let mut line = String::new();
            for (i, (text, tone)) in row.iter().enumerate() {
                let last = i + 1 == row.len();
                let cell = truncate(text, widths[i]);
                let pad = widths[i] - cell.chars().count();
                let tone = if n == 0 { Tone::Plain } else { *tone };
                let shown = paint(&cell, tone, style.color);
                if i > 0 {
                    line.push_str(GAP);
                }
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(&shown);
                } else {
                    line.push_str(&shown);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            let line = line.trim_end();
            if n == 0 && style.color {
                out.push_str(&format!("\x1b[1m{line}\x1b[0m\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// A duration in milliseconds for people: `850ms`, `1.2s`, `2m05s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// How long ago, for people: `3s ago`, `5m ago`, `2h ago`, `4d ago`.
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// The line a table shows for a result: the first line of stdout, else of
/// stderr, else the message (why it failed, refused, was not answered).
pub fn first_line(result: &NodeResult) -> String {
    for text in [&result.stdout, &result.stderr] {
        if let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) {
            return line.to_owned();
        }
    }
    result.msg.trim().to_owned()
}

fn text_or_dash(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "-".to_owned(),
    }
}

/// One row per node result: node, system, status, return code, time, output.
pub fn results_table(results: &[NodeResult]) -> Table {
    let mut t = Table::new(&["NODE", "SYSTEM", "STATUS", ">RC", ">TIME", "OUTPUT~"]);
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for r in results {
        let status = r.status.as_str();
        t.row(vec![
            (r.node.clone().unwrap_or_else(|| "?".into()), Tone::Plain),
            (or_dash(r.system.clone()), Tone::Plain),
            (status.to_owned(), Tone::of_status(status)),
            (or_dash(r.returncode.map(|c| c.to_string())), Tone::Plain),
            (or_dash(r.duration_ms.map(duration)), Tone::Plain),
            (first_line(r), Tone::Plain),
        ]);
    }
    t
}

/// `4 expected, 3 answered: 2 ok, 1 failed, 1 no_response`.
pub fn summary_line(summary: &Summary, color: bool) -> String {
    let counts: Vec<String> = summary
        .counts()
        .iter()
        .filter(|(_, c)| *c > 0)
        .map(|(s, c)| {
            let s = s.as_str();
            paint(&format!("{c} {s}"), Tone::of_status(s), color)
        })
        .collect();
    let mut line = if summary.expected_unknown {
        format!(
            "a 0.1 manager cannot tell who should answer: {} answered",
            summary.answered
        )
    } else {
        format!(
            "{} expected, {} answered",
            summary.expected, summary.answered
        )
    };
    if !counts.is_empty() {
        line.push_str(": ");
        line.push_str(&counts.join(", "));
    }
    line
}

/// The client's table for a report: every node's row, then the summary, the
/// job id and the time taken.
pub fn client_table(report: &Report, style: Style) -> String {
    let table = results_table(&report.results);
    let mut out = if table.is_empty() {
        "no node answered\n".to_owned()
    } else {
        table.render(style)
    };
    // A refusal or error is service-mgr's own sentence, and the fix is in
    // its tail: where the column had to cut one, print it whole below.
    let cut: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.stdout.trim().is_empty() && r.stderr.trim().is_empty())
        .filter_map(|r| {
            let reason = clean(r.msg.trim());
            (!reason.is_empty() && !out.contains(&reason)).then(|| {
                let node = clean(r.node.as_deref().unwrap_or("?"));
                format!("{node}: {}: {reason}\n", r.status.as_str())
            })
        })
        .collect();
    if !cut.is_empty() {
        out.push('\n');
        out.push_str(&cut.concat());
    }
    let o = &report.outline;
    out.push_str(&format!(
        "\n{}  ({} {}, {})\n",
        summary_line(&o.summary, style.color),
        if o.jobs.len() > 1 { "jobs" } else { "job" },
        if o.jobs.is_empty() {
            "-".to_owned()
        } else {
            o.jobs.join(" ")
        },
        duration(o.elapsed_ms)
    ));
    out
}

/// A JSON document on one line (`--format jsonl`).
pub fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("reports always serialize")
}

/// JSON the way 0.1 printed it: indented by four spaces.
pub fn to_json_pretty(v: &impl serde::Serialize) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).expect("JSON values always serialize");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// `-` for an empty cell.
fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// `manager.agents`: one row per agent.
pub fn agents_table(agents: &[AgentInfo], now_ms: u64) -> Table {
    let mut t = Table::new(&[
        "NODE",
        "STATE",
        "SYSTEM",
        "TOPICS~",
        "LAST SEEN",
        "VERSION",
        ">RUNNING",
    ]);
    for a in agents {
        let state = match (a.state, a.skew_s) {
            (AgentState::ClockSkew, Some(s)) => crate::protocol::mgmt::clock_skew(s),
            (st, _) => st.as_str().to_owned(),
        };
        let tone = Tone::of_status(a.state.as_str());
        t.row(vec![
            (or_dash(&a.node), Tone::Plain),
            (state, tone),
            (or_dash(&a.system), Tone::Plain),
            (a.topics.join(","), Tone::Plain),
            (
                if a.last_seen_ms == 0 {
                    "-".to_owned() // a pending key: never seen as an agent
                } else {
                    ago(now_ms.saturating_sub(a.last_seen_ms))
                },
                Tone::Plain,
            ),
            (or_dash(&a.agent_version), Tone::Plain),
            (a.running.to_string(), Tone::Plain),
        ]);
    }
    t
}

/// Where a request went: its topic, narrowed by nodes and glob. The job
/// store keeps the request as it was dispatched (`null` for a stub).
fn target(request: &Value) -> String {
    let mut parts = vec![text_or_dash(request.get("topic"))];
    if let Some(nodes) = request["nodes"].as_array() {
        let names: Vec<&str> = nodes.iter().filter_map(Value::as_str).collect();
        parts.push(format!("-N {}", names.join(",")));
    }
    if let Some(g) = request["glob"].as_str() {
        parts.push(format!("-G {g}"));
    }
    parts.join(" ")
}

/// `2 ok, 1 failed` from counts per status.
fn statuses(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "-".into();
    }
    let list: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    list.join(", ")
}

/// `manager.jobs`: one row per job, newest first (as the manager sends them).
pub fn jobs_table(jobs: &[JobSummary], now_ms: u64) -> Table {
    let mut t = Table::new(&[
        "JOB",
        ">AGE",
        "CMD",
        "SERVICE",
        "TARGET~",
        ">ANSWERED",
        "STATUSES~",
    ]);
    for j in jobs {
        let age = ago(now_ms.saturating_sub(j.created_ms));
        t.row(vec![
            (or_dash(&j.uuid), Tone::Plain),
            (age.trim_end_matches(" ago").to_owned(), Tone::Plain),
            (text_or_dash(j.request.get("cmd")), Tone::Plain),
            (text_or_dash(j.request.get("service")), Tone::Plain),
            (target(&j.request), Tone::Plain),
            (
                format!("{}/{}", j.answered_count, j.expected_count),
                Tone::Plain,
            ),
            (statuses(&j.status_counts), Tone::Plain),
        ]);
    }
    t
}

/// `manager.history`: a row per node's answer, newest request first.
pub fn history_table(entries: &[crate::protocol::mgmt::HistoryEntry], now_ms: u64) -> Table {
    let mut t = Table::new(&[
        ">WHEN", "CLIENT", "CMD", "SERVICE", "NODE", "STATUS", "JOB~",
    ]);
    for e in entries {
        let age = ago(now_ms.saturating_sub(e.requested_ms));
        // "smgr1 client NAME KEYID": the name says who.
        let client = e
            .client
            .as_deref()
            .map_or("unsigned", |c| c.split(' ').nth(2).unwrap_or(c));
        t.row(vec![
            (age, Tone::Plain),
            (or_dash(client), Tone::Plain),
            (or_dash(&e.cmd), Tone::Plain),
            (or_dash(&e.service), Tone::Plain),
            (or_dash(&e.node), Tone::Plain),
            (e.status.clone(), Tone::of_status(&e.status)),
            (or_dash(&e.uuid), Tone::Plain),
        ]);
    }
    t
}

/// `manager.job`: what was asked and when, then a row per node; expected
/// nodes with nothing recorded yet show as `pending`.
pub fn job_view(job: &JobRecord, now_ms: u64, style: Style) -> String {
    let r = &job.request;
    let mut out = format!(
        "job {}: {} {} on {}, {}\n\n",
        or_dash(&job.uuid),
        text_or_dash(r.get("cmd")),
        text_or_dash(r.get("service")),
        target(r),
        ago(now_ms.saturating_sub(job.created_ms))
    );
    let mut rows: Vec<NodeResult> = job
        .results
        .iter()
        .filter_map(|n| n.result.as_object())
        .map(|obj| NodeResult::answer(obj.clone()))
        .collect();
    let recorded: BTreeSet<&str> = job.results.iter().map(|n| n.node.as_str()).collect();
    for n in job
        .expected
        .iter()
        .filter(|n| !recorded.contains(n.as_str()))
    {
        rows.push(NodeResult::pending(Some(n.clone())));
    }
    let table = results_table(&rows);
    if table.is_empty() {
        out.push_str("no node answered\n");
    } else {
        out.push_str(&table.render(style));
    }
    let mut counts = BTreeMap::new();
    for n in &job.results {
        *counts.entry(n.status.clone()).or_insert(0) += 1;
    }
    let answered = job
        .results
        .iter()
        .filter(|n| n.status != Status::NoResponse.as_str())
        .count();
    out.push_str(&format!(
        "\n{answered}/{} answered: {}\n",
        job.expected.len(),
        statuses(&counts)
    ));
    out
}

/// `manager.status` (or `agent.status`): the interesting keys first, one per
/// line; lists and maps as compact JSON. Untyped on purpose: it shows every
/// key the peer sent, a 0.1 peer's or a newer one's (see
/// `protocol::mgmt::{ManagerStatus, AgentStatus}` for ours).
pub fn status_view(status: &Value, style: Style) -> String {
    let Some(obj) = status.as_object() else {
        return format!("{status}\n");
    };
    let first = ["status", "version", "agents_up", "jobs_in_memory"];
    let mut keys: Vec<&String> = obj.keys().filter(|k| first.contains(&k.as_str())).collect();
    keys.sort_by_key(|k| first.iter().position(|f| f == k));
    keys.extend(obj.keys().filter(|k| !first.contains(&k.as_str())));
    let mut t = Table::new(&["KEY", "VALUE~"]);
    for k in keys {
        let v = &obj[k.as_str()];
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let tone = if k == "status" {
            Tone::of_status(&text)
        } else {
            Tone::Plain
        };
        t.row(vec![(k.clone(), Tone::Plain), (text, tone)]);
    }
    t.render(style)
}

/// What the client shows while it waits: a live count of answers on stderr
/// (when stderr is a terminal), and with `--format jsonl` each answer on
/// stdout as it arrives.
pub struct Progress {
    live: bool,
    jsonl: bool,
    shown: bool,
    last: (usize, Option<usize>),
}

impl Progress {
    pub fn new(format: Format) -> Progress {
        Progress {
            live: std::io::stderr().is_terminal(),
            jsonl: format == Format::Jsonl,
            shown: false,
            last: (0, None),
        }
    }

    /// Whether `watch` prints each answer (`--format jsonl`).
    pub fn prints_answers(&self) -> bool {
        self.jsonl
    }

    /// A new answer (or the start of a job: `None`), with the count so far.
    pub fn watch(&mut self, new: Option<&NodeResult>, answered: usize, expected: Option<usize>) {
        if let (true, Some(result)) = (self.jsonl, new) {
            self.clear();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", to_json(result));
            let _ = out.flush();
        }
        self.last = (answered, expected);
        self.draw();
    }

    fn draw(&mut self) {
        if !self.live {
            return;
        }
        let (answered, expected) = self.last;
        let text = match expected {
            Some(e) => format!("waiting for answers: {answered} of {e}"),
            None => format!("waiting for answers: {answered}"),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{text}");
        let _ = err.flush();
        self.shown = true;
    }

    /// Remove the live line (before other output, and at the end).
    pub fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.shown = false;
        }
    }

    /// A line for the person on stderr, the live count kept below it.
    pub fn note(&mut self, msg: &str) {
        self.clear();
        eprintln!("{msg}");
    }

    /// Done waiting: remove the live line for good.
    pub fn finish(&mut self) {
        self.clear();
        self.live = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(v: Value) -> NodeResult {
        let Value::Object(obj) = v else { panic!() };
        NodeResult::answer(obj)
    }

    fn doc(jobs: &[&str], expected: &[&str], results: Vec<NodeResult>, ms: u64) -> Report {
        Report::new(
            crate::protocol::ServiceRequest::new("status", "sshd", "any"),
            jobs.iter().map(|s| s.to_string()).collect(),
            expected.iter().map(|s| s.to_string()).collect(),
            results,
            ms,
        )
    }

    fn report() -> Report {
        doc(
            &["0123abcd"],
            &["web1", "fbsd", "db1"],
            vec![
                answer(
                    json!({"msg": "Executed service status request", "node": "web1", "status": "ok",
                 "duration_ms": 12,
                 "result": {"node": "web1", "returncode": 0, "system": "Linux",
                            "stdout": "\nsshd is running as pid 1768.\nmore\n", "stderr": ""}}),
                ),
                answer(
                    json!({"msg": "Executed", "result": {"node": "fbsd", "returncode": 1, "system": "FreeBSD",
                            "stdout": ["", "  "], "stderr": "sshd: unrecognized\u{1b}[31m service\n"}}),
                ),
                NodeResult::no_response("db1", "u", "no answer within 60.0 s (-w)".into()),
            ],
            1234,
        )
    }

    #[test]
    fn a_table_for_a_small_document() {
        let out = client_table(&report(), Style::plain(100));
        let expected = "\
NODE  SYSTEM   STATUS       RC  TIME  OUTPUT
web1  Linux    ok            0  12ms  sshd is running as pid 1768.
fbsd  FreeBSD  failed        1     -  sshd: unrecognized?[31m service
db1   -        no_response   -     -  no answer within 60.0 s (-w)

3 expected, 2 answered: 1 ok, 1 failed, 1 no_response  (job 0123abcd, 1.2s)
";
        assert_eq!(out, expected);
    }

    /// Refusals were cut off in the table (`…is not in this agent'…`) and the
    /// fix they name was lost.
    #[test]
    fn a_cut_refusal_is_printed_whole_below_the_table() {
        let why = "client key alice@h (SHA256:abc) is not in this agent's authorized_clients \
                   (/etc/service-mgr/authorized_clients): add its line there";
        let doc = doc(
            &[],
            &[],
            vec![answer(
                json!({"node": "web1", "status": "refused", "msg": why,
                "result": {"node": "web1", "system": "Linux"}}),
            )],
            0,
        );
        let out = client_table(&doc, Style::plain(60));
        assert!(out.contains(&format!("web1: refused: {why}\n")), "{out}");
        // Room enough: nothing repeated.
        let wide = client_table(&doc, Style::plain(400));
        assert_eq!(wide.matches(why).count(), 1, "{wide}");
    }

    #[test]
    fn long_output_is_cut_to_its_first_line_and_truncated_to_fit() {
        let long = "x".repeat(300);
        let doc = doc(
            &[],
            &[],
            vec![answer(json!({"node": "n", "status": "ok",
                "result": {"node": "n", "returncode": 0, "system": "Linux",
                           "stdout": format!("{long}\nsecond line\n"), "stderr": ""}}))],
            0,
        );
        let out = client_table(&doc, Style::plain(60));
        let row = out.lines().nth(1).unwrap();
        assert_eq!(row.chars().count(), 60, "{row}");
        assert!(row.ends_with("x…"), "{row}");
        assert!(!out.contains("second line"));
        for line in out.lines() {
            assert!(line.chars().count() <= 60, "{line}");
        }
    }

    #[test]
    fn no_color_is_respected_and_colour_needs_a_terminal() {
        assert!(color_enabled(true, None));
        assert!(
            color_enabled(true, Some(OsStr::new(""))),
            "empty NO_COLOR is unset"
        );
        assert!(!color_enabled(true, Some(OsStr::new("1"))));
        assert!(!color_enabled(false, None), "never colour a pipe");
        let plain = client_table(&report(), Style::plain(100));
        assert!(!plain.contains('\x1b'));
        let coloured = client_table(
            &report(),
            Style {
                color: true,
                width: 100,
            },
        );
        assert!(coloured.contains("\x1b[32mok"), "{coloured}");
        assert!(coloured.contains("\x1b[31mfailed"), "{coloured}");
    }

    #[test]
    fn node_text_cannot_drive_the_terminal() {
        assert_eq!(clean("a\x1b[2Jb\r\tc"), "a?[2Jb? c");
    }

    #[test]
    fn durations_and_ages() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(1250), "1.2s");
        assert_eq!(duration(125_000), "2m05s");
        assert_eq!(ago(3_400), "3s ago");
        assert_eq!(ago(300_000), "5m ago");
        assert_eq!(ago(7_200_000), "2h ago");
    }

    #[test]
    fn agents_and_jobs_tables() {
        let now = 1_000_000;
        let agents: Vec<AgentInfo> = serde_json::from_value(json!([{"node": "web1",
            "instance": "i1", "release": "6.1", "os_version": "#1", "started_ms": 0,
            "key": null, "state": "up", "system": "Linux",
            "topics": ["Linux", "any", "web", "web1"], "last_seen_ms": now - 3000,
            "agent_version": "0.2.0", "running": 0}]))
        .unwrap();
        let out = agents_table(&agents, now).render(Style::plain(100));
        assert_eq!(
            out,
            "NODE  STATE  SYSTEM  TOPICS              LAST SEEN  VERSION  RUNNING\n\
             web1  up     Linux   Linux,any,web,web1  3s ago     0.2.0          0\n"
        );
        let request = json!({"cmd": "restart", "service": "nginx", "topic": "any",
            "nodes": ["web1", "web2"]});
        let jobs: Vec<JobSummary> = serde_json::from_value(json!([{"uuid": "abc",
            "created_ms": now - 60_000, "request": request, "expected_count": 2,
            "answered_count": 1, "status_counts": {"ok": 1}, "finished_ms": null}]))
        .unwrap();
        let out = jobs_table(&jobs, now).render(Style::plain(100));
        assert_eq!(
            out,
            "JOB  AGE  CMD      SERVICE  TARGET            ANSWERED  STATUSES\n\
             abc   1m  restart  nginx    any -N web1,web2       1/2  1 ok\n"
        );
        let job: JobRecord = serde_json::from_value(json!({"uuid": "abc",
            "created_ms": now - 60_000, "request": request, "expected": ["web1", "web2"],
            "results": [{"node": "web1", "status": "ok", "received_ms": now,
                "result": {"msg": "x", "result": {"node": "web1", "returncode": 0,
                "system": "Linux", "stdout": "restarted", "stderr": ""}}}],
            "finished_ms": null, "conflicts": 0}))
        .unwrap();
        let view = job_view(&job, now, Style::plain(100));
        assert!(view.contains("web1  Linux   ok"), "{view}");
        assert!(view.contains("web2  -       pending"), "{view}");
        assert!(view.ends_with("1/2 answered: 1 ok\n"), "{view}");
    }

    #[test]
    fn status_view_puts_the_state_first() {
        let out = status_view(
            &json!({"uname": {"system": "Linux"}, "status": "running", "version": "0.2.0"}),
            Style::plain(80),
        );
        assert_eq!(
            out,
            "KEY      VALUE\nstatus   running\nversion  0.2.0\nuname    {\"system\":\"Linux\"}\n"
        );
    }
}
