//! The result publisher: what clients receive, `[uuid][result]` (manager
//! XPUB → client SUB). The result message (0.1's shape and ours), the signed
//! and sealed envelope of our agents, and the client's one decode of a frame.

use super::{decode_object, DecodeError, PROTOCOL_VERSION, RESULT_LIMIT};
use crate::security::{Sealed, Signed};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Service output: 0.1's README shows a string, its last commit a list of
/// lines, built as `p.stdout.read().split('\n')` (so `"a\nb\n"` is
/// `["a", "b", ""]` and no output is `[""]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Output {
    Text(String),
    Lines(Vec<String>),
}

impl Output {
    /// The list of lines 0.1's agent sent for `text`: Python's `text.split('\n')`.
    pub fn lines_01(text: &str) -> Output {
        Output::Lines(text.split('\n').map(str::to_owned).collect())
    }

    /// The output as one string, whichever shape it came in.
    pub fn text(&self) -> String {
        match self {
            Output::Text(s) => s.clone(),
            Output::Lines(lines) => join_lines(lines),
        }
    }
}

/// A list of output lines as one string. 0.1's lines come without their
/// newline (`split('\n')`) and are joined with one; lines that keep theirs
/// (every one but the last ends with a newline) are put back to back.
pub fn join_lines<S: AsRef<str>>(lines: &[S]) -> String {
    let kept = lines.len() > 1
        && lines[..lines.len() - 1]
            .iter()
            .all(|l| l.as_ref().ends_with('\n'));
    let sep = if kept { "" } else { "\n" };
    lines
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<&str>>()
        .join(sep)
}

impl Default for Output {
    fn default() -> Self {
        Output::Text(String::new())
    }
}

/// The outcome of one request on one node, as our agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The command ran and exited 0.
    Ok,
    /// The command ran and failed, or could not be run.
    Failed,
    /// The command outlived its timeout and was killed.
    Timeout,
    /// The agent refused the request (bad name, command not allowed); nothing ran.
    Refused,
    /// The node was expected to answer and did not (set by the manager or client).
    NoResponse,
    /// The command was running when the agent stopped and outlived its
    /// `stop_timeout`: its process group was killed. Not ok.
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Refused => "refused",
            Status::NoResponse => "no_response",
            Status::Interrupted => "interrupted",
        }
    }
}

/// The `result` object of a successful execution (0.1 fields first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    pub node: String,
    pub service: String,
    pub returncode: i64,
    pub stdout: Output,
    pub stderr: Output,
    pub system: String,
    pub version: String,
}

/// A result frame on the sink (agent PUSH -> manager PULL), republished to clients.
///
/// 0.1 success:
/// ```json
/// {"msg": "Executed service status request",
///  "result": {"node": "fbsd-dev", "service": "sshd", "returncode": 0,
///             "stdout": "sshd is running as pid 1768.\n", "stderr": "",
///             "system": "FreeBSD", "version": "FreeBSD 9.2-RELEASE ..."},
///  "uuid": "f569796669df4bf6982dd14c704900a0"}
/// ```
/// 0.1 failure: `{"success": -1, "msg": "Missing message properties", "uuid": "..."}`.
///
/// Ours adds `v`, `node` (also on failures, so every answer names its node),
/// `status`, `cmd`, `duration_ms` and `truncated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMsg {
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ExecResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// For `status`: what the answer means for the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServiceState>,
}

/// Keep the first half of `t` (at a character boundary).
fn halve(t: &mut String) {
    let mut at = t.len() / 2;
    while !t.is_char_boundary(at) {
        at -= 1;
    }
    t.truncate(at);
}

/// What a `status` answer says about the service, from LSB init-script exit
/// codes (0 running, 1-3 not running, 4 unknown) and systemctl's (3 inactive,
/// 4 no such unit), and the messages of service(8) for names it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Running,
    Stopped,
    UnknownService,
    Error,
}

impl ServiceState {
    /// Classify a status command's exit code and output. A service that does
    /// not exist is never "running", whatever the exit code says.
    pub fn from_status(returncode: i64, stdout: &str, stderr: &str) -> ServiceState {
        const UNKNOWN: [&str; 6] = [
            "unrecognized service",
            "does not exist",
            "could not be found",
            "not-found",
            "no such service",
            "unknown service",
        ];
        let text = format!("{stdout}\n{stderr}").to_ascii_lowercase();
        if UNKNOWN.iter().any(|m| text.contains(m)) {
            return ServiceState::UnknownService;
        }
        match returncode {
            0 => ServiceState::Running,
            1..=3 => ServiceState::Stopped,
            4 => ServiceState::UnknownService,
            _ => ServiceState::Error,
        }
    }
}

impl ResultMsg {
    /// A result that the manager or client writes for a node that did not answer.
    pub fn no_response(uuid: &str, node: &str, why: &str) -> ResultMsg {
        ResultMsg {
            msg: why.to_owned(),
            success: Some(-1),
            result: None,
            uuid: Some(uuid.to_owned()),
            v: Some(PROTOCOL_VERSION),
            node: Some(node.to_owned()),
            status: Some(Status::NoResponse),
            cmd: None,
            duration_ms: None,
            truncated: false,
            state: None,
        }
    }

    /// The node that produced this result, from wherever the sender put it.
    pub fn node(&self) -> Option<&str> {
        self.node
            .as_deref()
            .or(self.result.as_ref().map(|r| r.node.as_str()))
    }

    /// Cut the outputs to about half, keeping their start, for a result whose
    /// frame is over [`RESULT_LIMIT`] (see there). Marks the result
    /// truncated; false when there was nothing left to cut.
    pub fn shrink_output(&mut self) -> bool {
        let Some(r) = self.result.as_mut() else {
            return false;
        };
        const CUT: &str = "[service-mgr: output truncated to fit a result message]";
        let cut = |o: &mut Output| match o {
            Output::Text(t) => {
                // The marker of an earlier cut is not cut again.
                let body = t
                    .strip_suffix(CUT)
                    .map_or(t.len(), |b| b.strip_suffix('\n').unwrap_or(b).len());
                if body < 2 {
                    return false;
                }
                t.truncate(body);
                halve(t);
                t.push('\n');
                t.push_str(CUT);
                true
            }
            Output::Lines(lines) if lines.len() > 2 => {
                lines.truncate(lines.len() / 2);
                lines.push(CUT.into());
                true
            }
            Output::Lines(lines) => match lines.iter_mut().max_by_key(|l| l.len()) {
                Some(l) if l.len() > CUT.len() * 2 => {
                    halve(l);
                    true
                }
                _ => false,
            },
        };
        let a = cut(&mut r.stdout);
        let b = cut(&mut r.stderr);
        if a || b {
            self.truncated = true;
        }
        a || b
    }

    /// The status, derived for 0.1 results that do not carry one.
    pub fn effective_status(&self) -> Status {
        if let Some(s) = self.status {
            return s;
        }
        match (&self.result, self.success) {
            (Some(r), _) if r.returncode == 0 => Status::Ok,
            _ => Status::Failed,
        }
    }
}

/// A result of ours in secure mode (agent PUSH -> manager -> client). The
/// routing fields stay readable; `auth` is the agent's signature over a
/// [`SignedResult`], whose `sealed` holds the full [`ResultMsg`] encrypted to
/// the requesting client's key (or `result` in clear when the request was not
/// signed and there is no key to seal to).
///
/// ```json
/// {"v": 2, "uuid": "f569...", "node": "web1", "status": "ok", "msg": "sealed result",
///  "auth": {"key": "AAAA...", "body": "{\"uuid\": ...}", "sig": "..."}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultEnvelope {
    pub v: u64,
    pub uuid: String,
    pub node: String,
    pub status: Status,
    pub msg: String,
    pub auth: Signed,
}

/// What an agent signs for a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedResult {
    pub uuid: String,
    pub node: String,
    pub status: Status,
    /// The id of the signed request it answers, if it was signed.
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultMsg>,
}

impl SignedResult {
    /// Decode the text a result signature covered.
    pub fn from_signed(text: &str) -> Result<SignedResult, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A frame from the result publisher, as the client reads it: decoded once,
/// its kind decided by the presence of `auth`.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultFrame {
    /// Unsigned: a 0.1 agent's result, or the manager's own `no_response`.
    /// Kept as the object that arrived, so that 0.1 fields we do not know survive.
    Plain(Map<String, Value>),
    /// Ours, signed (and usually sealed).
    Signed(ResultEnvelope),
    /// It has `auth` but is not a valid envelope: never shown as an answer.
    BadSigned { node: Option<String>, why: String },
}

impl ResultFrame {
    pub fn decode(bytes: &[u8]) -> Result<ResultFrame, DecodeError> {
        Ok(Self::from_object(decode_object(bytes, RESULT_LIMIT)?))
    }

    /// The frame of an object already decoded (a result kept in a job record).
    pub fn from_object(m: Map<String, Value>) -> ResultFrame {
        if !m.contains_key("auth") {
            return ResultFrame::Plain(m);
        }
        let node = m.get("node").and_then(Value::as_str).map(str::to_owned);
        match ResultEnvelope::deserialize(Value::Object(m)) {
            Ok(env) => ResultFrame::Signed(env),
            Err(e) => ResultFrame::BadSigned {
                node,
                why: format!("malformed signed result: {e}"),
            },
        }
    }

    /// The node the frame says it comes from (top-level `node` only, as the
    /// client reports an unverified result).
    pub fn node(&self) -> Option<&str> {
        match self {
            ResultFrame::Plain(m) => m.get("node").and_then(Value::as_str),
            ResultFrame::Signed(env) => Some(&env.node),
            ResultFrame::BadSigned { node, .. } => node.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::*;

    #[test]
    fn shrink_output_halves_both_outputs_and_says_so() {
        let mut r = ResultMsg::no_response("u", "n", "x");
        assert!(!r.shrink_output(), "nothing to cut");
        r.result = Some(ExecResult {
            node: "n".into(),
            service: "s".into(),
            returncode: 0,
            stdout: Output::Text("é".repeat(1000)),
            stderr: Output::lines_01(&"line\n".repeat(100)),
            system: "Linux".into(),
            version: "1".into(),
        });
        assert!(r.shrink_output());
        assert!(r.truncated);
        let res = r.result.as_ref().unwrap();
        let out = res.stdout.text();
        assert!(
            out.len() < 1100 && out.ends_with("to fit a result message]"),
            "{out}"
        );
        let Output::Lines(lines) = &res.stderr else {
            panic!()
        };
        assert_eq!(lines.len(), 51);
        // Cut again and again, it ends.
        let mut n = 0;
        while r.shrink_output() {
            n += 1;
            assert!(n < 20);
        }
    }
    use serde_json::{json, Value};

    /// The README's FreeBSD `status sshd` answer, byte for byte what 0.1 agents send.
    const GOLDEN_01_RESULT: &str = include_str!("../../tests/fixtures/results/result-0.1.json");
    /// The README's Debian `status dummy` answer from the discovery example.
    const GOLDEN_01_UNRECOGNIZED: &str =
        include_str!("../../tests/fixtures/results/result-0.1-unrecognized.json");

    #[test]
    fn golden_01_results_decode_and_reencode_unchanged() {
        for golden in [GOLDEN_01_RESULT, GOLDEN_01_UNRECOGNIZED] {
            let r: ResultMsg = serde_json::from_str(golden).unwrap();
            // Re-encoding a 0.1 result adds nothing: the client prints what the agent sent.
            let original: Value = serde_json::from_str(golden).unwrap();
            assert_eq!(serde_json::to_value(&r).unwrap(), original);
            roundtrip(&r);
        }
        let ok: ResultMsg = serde_json::from_str(GOLDEN_01_RESULT).unwrap();
        assert_eq!(ok.node(), Some("fbsd-dev"));
        assert_eq!(ok.effective_status(), Status::Ok);
        let bad: ResultMsg = serde_json::from_str(GOLDEN_01_UNRECOGNIZED).unwrap();
        assert_eq!(bad.effective_status(), Status::Failed);
    }

    #[test]
    fn output_accepts_string_and_list_of_lines() {
        let lines: ResultMsg = serde_json::from_value(json!({
            "msg": "Executed service status request",
            "result": {"node": "n", "service": "s", "returncode": 0,
                       "stdout": ["a\n", "b\n"], "stderr": [], "system": "Linux", "version": "v"},
            "uuid": "u"
        }))
        .unwrap();
        let r = lines.result.as_ref().unwrap();
        assert_eq!(r.stdout.text(), "a\nb\n");
        assert_eq!(r.stderr.text(), "");
        roundtrip(&lines);
    }

    /// Issue 15: 0.1's lists (`out.split('\n')`) lost their newlines when joined.
    #[test]
    fn lists_of_01_lines_join_back_into_the_output() {
        for text in ["", "a\n", "a\nb\n", "no newline", "a\n\nb"] {
            assert_eq!(Output::lines_01(text).text(), text, "{text:?}");
        }
        assert_eq!(
            Output::lines_01("fake ok\n"),
            Output::Lines(vec!["fake ok".into(), "".into()])
        );
        assert_eq!(Output::lines_01(""), Output::Lines(vec!["".into()]));
        // The other habit, lines that keep their newline, joins as before.
        assert_eq!(join_lines(&["a\n", "b\n"]), "a\nb\n");
        assert_eq!(join_lines::<&str>(&[]), "");
    }

    #[test]
    fn error_results_of_01_decode() {
        let r: ResultMsg = serde_json::from_value(json!({
            "success": -1, "msg": "Unable to determine location to service(8)",
            "node": "h1", "uuid": "u"}))
        .unwrap();
        assert_eq!(r.node(), Some("h1"));
        assert_eq!(r.effective_status(), Status::Failed);
        roundtrip(&r);
    }

    #[test]
    fn our_result_roundtrip() {
        let r = ResultMsg {
            msg: "Executed service status request".into(),
            success: None,
            result: Some(ExecResult {
                node: "web1".into(),
                service: "nginx".into(),
                returncode: 3,
                stdout: Output::Text("stopped\n".into()),
                stderr: Output::default(),
                system: "Linux".into(),
                version: "#1 SMP".into(),
            }),
            uuid: Some("u".into()),
            v: Some(2),
            node: Some("web1".into()),
            status: Some(Status::Failed),
            cmd: Some("status".into()),
            duration_ms: Some(12),
            truncated: false,
            state: Some(ServiceState::Stopped),
        };
        roundtrip(&r);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "failed");
        assert!(v.get("truncated").is_none());
    }

    #[test]
    fn status_answers_map_to_states() {
        use ServiceState::*;
        assert_eq!(
            ServiceState::from_status(0, "sshd is running as pid 1768.\n", ""),
            Running
        );
        assert_eq!(ServiceState::from_status(3, "", ""), Stopped);
        assert_eq!(
            ServiceState::from_status(1, "", "dummy: unrecognized service\n"),
            UnknownService
        );
        assert_eq!(
            ServiceState::from_status(
                1,
                "dummy does not exist in /etc/rc.d or the local startup\n",
                ""
            ),
            UnknownService
        );
        assert_eq!(
            ServiceState::from_status(4, "Unit x.service could not be found.", ""),
            UnknownService
        );
        // Exit 0 with "not found" text is still not "running".
        assert_eq!(
            ServiceState::from_status(0, "", "Unit foo.service could not be found."),
            UnknownService
        );
        assert_eq!(ServiceState::from_status(150, "", ""), Error);
    }
}
