//! The client's report, typed: every targeted node's outcome and a summary.
//! `client` builds it, `output` prints it; it serializes byte for byte as the
//! documents of `--format json|jsonl|legacy` have always looked.

use crate::protocol::{self as p, ServiceRequest, PROTOCOL_VERSION};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

/// A node's outcome as reports show it: what the agent (or the manager) sent,
/// or what the client made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// `ok`, `failed`, `timeout`, `interrupted`, `refused` or `no_response` (a silent node).
    Sent(p::Status),
    /// Not run: an earlier batch of a `--fail-fast` rollout failed.
    Skipped,
    /// An answer whose signature or seal did not check out; never shown as the node's.
    Unverified,
    /// `mgmt job`: no answer yet.
    Pending,
    /// A status this version does not know, shown as sent.
    Other(String),
}

/// The statuses of the protocol, in the order a summary lists them.
const SENT: [p::Status; 6] = [
    p::Status::Ok,
    p::Status::Failed,
    p::Status::Timeout,
    p::Status::Interrupted,
    p::Status::Refused,
    p::Status::NoResponse,
];

impl Status {
    pub const OK: Status = Status::Sent(p::Status::Ok);
    pub const NO_RESPONSE: Status = Status::Sent(p::Status::NoResponse);

    /// Every status a summary counts, in the order it lists them.
    pub const COUNTED: [Status; 8] = [
        Status::Sent(SENT[0]),
        Status::Sent(SENT[1]),
        Status::Sent(SENT[2]),
        Status::Sent(SENT[3]),
        Status::Sent(SENT[4]),
        Status::Sent(SENT[5]),
        Status::Skipped,
        Status::Unverified,
    ];

    pub fn parse(s: &str) -> Status {
        match s {
            "skipped" => Status::Skipped,
            "unverified" => Status::Unverified,
            "pending" => Status::Pending,
            other => SENT
                .into_iter()
                .find(|k| k.as_str() == other)
                .map_or_else(|| Status::Other(other.to_owned()), Status::Sent),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Status::Sent(s) => s.as_str(),
            Status::Skipped => "skipped",
            Status::Unverified => "unverified",
            Status::Pending => "pending",
            Status::Other(s) => s,
        }
    }

    /// Whether a summary counts the line as answered (whatever a node sent counts).
    pub fn answered(&self) -> bool {
        !matches!(self, &Status::NO_RESPONSE | Status::Skipped)
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The node a result came from, wherever its sender put it.
pub fn node_of(obj: &Map<String, Value>) -> Option<String> {
    obj.get("node")
        .or_else(|| obj.get("result").and_then(|r| r.get("node")))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The status of one result: ours carry it, 0.1's are derived from the return code.
pub fn status_of(obj: &Map<String, Value>) -> String {
    if let Some(s) = obj.get("status").and_then(Value::as_str) {
        return s.to_owned();
    }
    match obj
        .get("result")
        .and_then(|r| r.get("returncode"))
        .and_then(Value::as_i64)
    {
        Some(0) => "ok".to_owned(),
        _ => "failed".to_owned(),
    }
}

/// One node's line in a report.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeResult {
    pub node: Option<String>,
    pub status: Status,
    /// Why it failed, was refused or not answered; 0.1's `msg`.
    pub msg: String,
    /// What the node's service command said, when it ran.
    pub system: Option<String>,
    pub returncode: Option<i64>,
    /// Its output, a list of lines joined (0.1 sends a string).
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: Option<u64>,
    source: Source,
}

/// Where a line came from, which decides how it is written out.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// An answer, kept as it came (0.1's fields and any this version does not
    /// know) so that it prints unchanged, with `node` and `status` added.
    Answer(Map<String, Value>),
    NoResponse {
        uuid: String,
    },
    Skipped,
    Pending,
}

/// A service output (0.1: a string; later a list of lines) as one string.
fn output_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(lines)) => {
            p::join_lines(&lines.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        }
        _ => String::new(),
    }
}

/// `--format legacy`: the lines as 0.1's client printed them. An agent of
/// ours (it sends `v`) has its `stdout`/`stderr` strings turned into 0.1's
/// lists of lines (`split('\n')`, as 0.1's last release sent them); what a
/// 0.1 agent sent is printed as it came.
pub fn legacy(results: &[NodeResult]) -> Vec<Value> {
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
        let ours = v.get("v").is_some();
        if let Some(Value::Object(inner)) = v.get_mut("result").filter(|_| ours) {
            for k in ["stdout", "stderr"] {
                if let Some(Value::String(text)) = inner.get(k) {
                    let lines = text
                        .split('\n')
                        .map(|l| Value::String(l.to_owned()))
                        .collect();
                    inner.insert(k.to_owned(), Value::Array(lines));
                }
            }
        }
        out.push(v);
    }
    out
}

impl NodeResult {
    /// An answer as the client received it (checked already).
    pub fn answer(obj: Map<String, Value>) -> NodeResult {
        let inner = obj.get("result");
        let field = |k: &str| inner.and_then(|r| r.get(k));
        NodeResult {
            node: node_of(&obj),
            status: Status::parse(&status_of(&obj)),
            msg: obj
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            system: match field("system") {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            },
            returncode: field("returncode").and_then(Value::as_i64),
            stdout: output_text(field("stdout")),
            stderr: output_text(field("stderr")),
            duration_ms: obj.get("duration_ms").and_then(Value::as_u64),
            source: Source::Answer(obj),
        }
    }

    fn unanswered(node: Option<String>, status: Status, msg: String, source: Source) -> NodeResult {
        NodeResult {
            node,
            status,
            msg,
            system: None,
            returncode: None,
            stdout: String::new(),
            stderr: String::new(),
            duration_ms: None,
            source,
        }
    }

    /// An expected node of job `uuid` that stayed silent.
    pub fn no_response(node: &str, uuid: &str, msg: String) -> NodeResult {
        let uuid = uuid.to_owned();
        NodeResult::unanswered(
            Some(node.to_owned()),
            Status::NO_RESPONSE,
            msg,
            Source::NoResponse { uuid },
        )
    }

    /// A subscriber of job `uuid` that the manager counted without a name
    /// (a 0.1 agent) and that stayed silent.
    pub fn silent_unnamed(uuid: &str, msg: String) -> NodeResult {
        let uuid = uuid.to_owned();
        NodeResult::unanswered(None, Status::NO_RESPONSE, msg, Source::NoResponse { uuid })
    }

    /// A node a `--fail-fast` rollout never reached.
    pub fn skipped(node: &str, msg: &str) -> NodeResult {
        NodeResult::unanswered(
            Some(node.to_owned()),
            Status::Skipped,
            msg.to_owned(),
            Source::Skipped,
        )
    }

    /// `mgmt job`: a node that has not answered yet.
    pub fn pending(node: Option<String>) -> NodeResult {
        NodeResult::unanswered(
            node,
            Status::Pending,
            "no answer yet".to_owned(),
            Source::Pending,
        )
    }
}

impl Serialize for NodeResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match &self.source {
            Source::Answer(obj) => {
                // The answer's own keys in their order, its status as derived;
                // then what it lacked.
                for (k, v) in obj {
                    match k.as_str() {
                        "status" => m.serialize_entry(k, &self.status)?,
                        _ => m.serialize_entry(k, v)?,
                    }
                }
                if let (false, Some(node)) = (obj.contains_key("node"), &self.node) {
                    m.serialize_entry("node", node)?;
                }
                if !obj.contains_key("status") {
                    m.serialize_entry("status", &self.status)?;
                }
            }
            Source::NoResponse { uuid } => {
                m.serialize_entry("msg", &self.msg)?;
                m.serialize_entry("success", &-1)?;
                m.serialize_entry("uuid", uuid)?;
                m.serialize_entry("node", &self.node)?;
                m.serialize_entry("status", &self.status)?;
            }
            Source::Skipped | Source::Pending => {
                m.serialize_entry("msg", &self.msg)?;
                m.serialize_entry("node", &self.node)?;
                m.serialize_entry("status", &self.status)?;
            }
        }
        m.end()
    }
}

/// Counts per status, plus how many nodes were expected and answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub expected: usize,
    pub answered: usize,
    pub ok: usize,
    pub failed: usize,
    pub timeout: usize,
    pub refused: usize,
    pub no_response: usize,
    pub skipped: usize,
    pub unverified: usize,
    /// Last, so that documents without one keep their shape up to here.
    pub interrupted: usize,
    /// A 0.1 manager cannot say who should answer: `expected` means nothing.
    #[serde(skip)]
    pub expected_unknown: bool,
}

impl Summary {
    /// `expected` counts the nodes the manager named plus those skipped.
    pub fn of(expected: usize, results: &[NodeResult]) -> Summary {
        let count = |s: &Status| results.iter().filter(|r| &r.status == s).count();
        Summary {
            expected,
            answered: results.iter().filter(|r| r.status.answered()).count(),
            ok: count(&Status::OK),
            failed: count(&Status::Sent(p::Status::Failed)),
            timeout: count(&Status::Sent(p::Status::Timeout)),
            refused: count(&Status::Sent(p::Status::Refused)),
            no_response: count(&Status::NO_RESPONSE),
            skipped: count(&Status::Skipped),
            unverified: count(&Status::Unverified),
            interrupted: count(&Status::Sent(p::Status::Interrupted)),
            expected_unknown: false,
        }
    }

    /// The count of each status in `Status::COUNTED`, in that order.
    pub fn counts(&self) -> [(Status, usize); 8] {
        let n = [
            self.ok,
            self.failed,
            self.timeout,
            self.interrupted,
            self.refused,
            self.no_response,
            self.skipped,
            self.unverified,
        ];
        std::array::from_fn(|i| (Status::COUNTED[i].clone(), n[i]))
    }
}

/// What a run asked and how it went, without the per-node lines: the last
/// line of `--format jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct Outline {
    pub v: u64,
    /// The first job (the only one unless `--batch`).
    pub job: Option<String>,
    pub jobs: Vec<String>,
    pub request: ServiceRequest,
    pub expected: Vec<String>,
    pub summary: Summary,
    pub elapsed_ms: u64,
}

/// The document of a run (`--format json`): the outline, then every node's line.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub outline: Outline,
    pub results: Vec<NodeResult>,
}

impl Report {
    pub fn new(
        request: ServiceRequest,
        jobs: Vec<String>,
        expected: Vec<String>,
        results: Vec<NodeResult>,
        elapsed_ms: u64,
    ) -> Report {
        Report {
            outline: Outline {
                v: PROTOCOL_VERSION,
                job: jobs.first().cloned(),
                summary: Summary::of(expected.len(), &results),
                jobs,
                request,
                expected,
                elapsed_ms,
            },
            results,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(v: Value) -> NodeResult {
        let Value::Object(m) = v else { panic!() };
        NodeResult::answer(m)
    }

    #[test]
    fn answers_print_as_they_came_with_node_and_status_added() {
        let r = answer(json!({"msg": "x", "result": {"node": "a", "returncode": 3}, "uuid": "u"}));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"msg":"x","result":{"node":"a","returncode":3},"uuid":"u","node":"a","status":"failed"}"#
        );
        // A status that is not a string is replaced where it stands.
        let r =
            answer(json!({"status": 7, "node": "b", "result": {"returncode": 0}, "extra": [1]}));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"status":"ok","node":"b","result":{"returncode":0},"extra":[1]}"#
        );
        let r = answer(json!({"msg": "bad", "node": null, "uuid": "u", "status": "unverified"}));
        assert_eq!((r.node.as_deref(), &r.status), (None, &Status::Unverified));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"msg":"bad","node":null,"uuid":"u","status":"unverified"}"#
        );
    }

    /// Issue 15: `--format legacy` printed our agents' outputs as strings,
    /// where 0.1 sent lists of lines (`stdout[0]` scripts broke).
    #[test]
    fn legacy_prints_our_outputs_as_01_lists_and_01_answers_as_sent() {
        let ours = answer(json!({"msg": "x", "v": 2, "node": "a", "status": "ok",
            "result": {"node": "a", "returncode": 0, "stdout": "fake ok\n", "stderr": ""}}));
        let old = answer(json!({"msg": "x", "uuid": "u",
            "result": {"node": "b", "returncode": 0, "stdout": "b ok\n", "stderr": ""}}));
        let printed = legacy(&[ours.clone(), old]);
        assert_eq!(printed[0]["result"]["stdout"], json!(["fake ok", ""]));
        assert_eq!(printed[0]["result"]["stderr"], json!([""]));
        assert_eq!(printed[1]["result"]["stdout"], "b ok\n");
        // The typed line reads both shapes to the same text.
        assert_eq!(ours.stdout, "fake ok\n");
        let lines = answer(json!({"node": "c", "result": {"stdout": ["c ok", ""]}}));
        assert_eq!(lines.stdout, "c ok\n");
    }

    #[test]
    fn lines_for_silent_and_skipped_nodes() {
        let r = NodeResult::no_response("c", "u", "no answer".into());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"msg":"no answer","success":-1,"uuid":"u","node":"c","status":"no_response"}"#
        );
        let r = NodeResult::skipped("d", "not run");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"msg":"not run","node":"d","status":"skipped"}"#
        );
    }

    #[test]
    fn summary_counts_every_status_in_order() {
        let results = [
            answer(json!({"node": "a", "status": "ok"})),
            answer(json!({"node": "b", "status": "weird"})),
            NodeResult::no_response("c", "u", String::new()),
            NodeResult::skipped("d", ""),
        ];
        let s = Summary::of(4, &results);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"expected":4,"answered":2,"ok":1,"failed":0,"timeout":0,"refused":0,"no_response":1,"skipped":1,"unverified":0,"interrupted":0}"#
        );
        let counts = s.counts();
        let counts: Vec<(&str, usize)> = counts.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(counts[0], ("ok", 1));
        assert_eq!(counts[3], ("interrupted", 0));
        assert_eq!(counts[7], ("unverified", 0));
    }
}
