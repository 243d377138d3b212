//! Output formats of the client and of mgmt, through the real binary.

use crate::util::*;
use serde_json::Value;
use std::process::Command;

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn jsonl_prints_each_answer_then_the_silent_nodes_then_a_summary() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let _b = agent(&mgr, "n2", &fake, &[]);
        let (out, stdout) = Client::new(&mgr)
            .nodes("n1,n2,ghost")
            .cmd("status")
            .service("svc")
            .wait("2")
            .format("jsonl")
            .text();
        assert_eq!(out.status.code(), Some(4), "{}", text(&out).1);
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 4, "{stdout}");
        // Answers and the silent node's verdict come as they happen (here the
        // unknown node's at once), then one summary line.
        let mut answered: Vec<&str> = lines[..3]
            .iter()
            .filter(|l| l["status"] == "ok")
            .map(|l| l["node"].as_str().unwrap())
            .collect();
        answered.sort();
        assert_eq!(answered, ["n1", "n2"], "{stdout}");
        assert!(
            lines[..3]
                .iter()
                .any(|l| l["node"] == "ghost" && l["status"] == "no_response"),
            "{stdout}"
        );
        let summary = &lines[3]["summary"];
        assert_eq!(
            (summary["expected"].as_u64(), summary["answered"].as_u64()),
            (Some(3), Some(2)),
            "{stdout}"
        );
        assert!(
            lines[3]["results"].is_null(),
            "the summary line repeats no results"
        );
    });
}

#[test]
fn table_shows_a_row_per_node_and_a_summary() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let _b = agent(&mgr, "n2", &fake, &[]);
        let (out, stdout) = Client::new(&mgr)
            .topic("any")
            .cmd("status")
            .service("stopped-svc")
            .format("table")
            .text();
        assert_eq!(out.status.code(), Some(3), "{}", text(&out).1);
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(
            lines[0].starts_with("NODE") && lines[0].contains("OUTPUT"),
            "{stdout}"
        );
        for node in ["n1", "n2"] {
            let row = lines
                .iter()
                .find(|l| l.starts_with(node))
                .unwrap_or_else(|| panic!("{stdout}"));
            assert!(
                row.contains("failed") && row.contains("stopped-svc is not running"),
                "{row}"
            );
        }
        assert!(
            stdout.contains("2 expected, 2 answered: 2 failed"),
            "{stdout}"
        );
        assert!(!stdout.contains('\x1b'), "no colour into a pipe");
    });
}

#[test]
fn piped_output_keeps_the_01_array_for_the_01_name() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let links = tempfile::tempdir().unwrap();
        assert!(run(&["install-links", links.path().to_str().unwrap()])
            .status
            .success());
        let out = output(Command::new(links.path().join("service-mgr-client")).args([
            "-k",
            &mgr.pki.as_ref().unwrap().client_key(),
            "-e",
            &mgr.ep("frontend_endpoint"),
            "-T",
            "n1",
            "-c",
            "status",
            "-s",
            "svc",
        ]));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["result"]["node"], "n1", "{v}");
        let (_, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("status")
            .service("svc")
            .run();
        assert_eq!(
            doc["summary"]["ok"], 1,
            "service-mgr client prints the document: {doc}"
        );
    });
}

/// Run `cmd` on a pseudo-terminal (util-linux script(1)); `None` without script.
fn on_terminal(cmd: &str, no_color: bool) -> Option<String> {
    let mut c = Command::new("script");
    c.args(["-qec", cmd, "/dev/null"]).env_remove("NO_COLOR");
    if no_color {
        c.env("NO_COLOR", "1");
    }
    let out = c.output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn on_a_terminal_the_client_prints_a_coloured_table_unless_no_color() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let cmd = format!(
            "'{}' client -k '{}' --manager-key '{}' -e {} -T n1 -c status -s svc",
            bin(),
            mgr.pki.as_ref().unwrap().client_key(),
            mgr.pki.as_ref().unwrap().path("state/manager.key.pub"),
            mgr.ep("frontend_endpoint")
        );
        let Some(screen) = on_terminal(&cmd, false) else {
            eprintln!("SKIP on_a_terminal_...: script(1) not found");
            return;
        };
        assert!(
            screen.contains("NODE") && screen.contains("1 expected, 1 answered"),
            "{screen}"
        );
        assert!(screen.contains("\x1b[32mok"), "ok in green: {screen:?}");
        assert!(
            screen.contains("waiting for answers"),
            "live count: {screen:?}"
        );
        let plain = on_terminal(&cmd, true).unwrap();
        assert!(plain.contains("NODE"), "{plain}");
        assert!(
            !plain.contains("\x1b[32m") && !plain.contains("\x1b[1m"),
            "NO_COLOR: {plain:?}"
        );
    });
}

#[test]
fn mgmt_short_names_print_tables_and_full_names_the_json_reply() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let (_, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("status")
            .service("svc")
            .run();
        let job = doc["job"].as_str().unwrap().to_owned();
        let ep = mgr.ep("mgmt_endpoint");
        let mgmt = |args: &[&str]| {
            let mut all = vec!["mgmt", "-e", &ep];
            all.extend_from_slice(args);
            let out = run(&all);
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{args:?}: {stderr}");
            stdout
        };
        let agents = mgmt(&["agents", "--format", "table"]);
        assert!(
            agents.starts_with("NODE") && agents.contains("LAST SEEN"),
            "{agents}"
        );
        let row = agents.lines().nth(1).unwrap();
        assert!(
            row.starts_with("n1") && row.contains(" up ") && row.contains("s ago"),
            "{row}"
        );
        let jobs = mgmt(&["jobs", "--format", "table"]);
        assert!(
            jobs.contains(&job) && jobs.contains("1/1") && jobs.contains("1 ok"),
            "{jobs}"
        );
        let one = mgmt(&["job", &job, "--format", "table"]);
        assert!(
            one.starts_with(&format!("job {job}: status svc on n1")),
            "{one}"
        );
        assert!(
            one.lines().any(|l| l.starts_with("n1") && l.contains("ok")),
            "{one}"
        );
        let status = mgmt(&["status", "--format", "table"]);
        assert!(
            status.contains("status") && status.contains("running"),
            "{status}"
        );

        // Piped, short names print JSON; full names always do (0.1's output).
        let v: Value = serde_json::from_str(&mgmt(&["agents"])).unwrap();
        assert_eq!(v["result"][0]["node"], "n1");
        let v: Value = serde_json::from_str(&mgmt(&["manager.status"])).unwrap();
        assert_eq!(v["result"]["status"], "running");
        let v: Value = serde_json::from_str(&mgmt(&["manager.job", &job])).unwrap();
        assert_eq!(v["result"]["uuid"], job.as_str());
        assert_eq!(
            run(&["mgmt", "-e", &ep, "job"]).status.code(),
            Some(2),
            "job needs an ID"
        );
        let out = run(&["mgmt", "-e", &ep, "job", "nosuchjob", "--format", "table"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out).1.contains("no job nosuchjob"),
            "{}",
            text(&out).1
        );
    });
}

/// Issue 15: `mgmt job ID` as a table showed every row `ok` but SYSTEM, RC
/// and TIME as `-`, and `0/3 answered: -`.
#[test]
fn mgmt_job_table_shows_system_rc_time_and_the_count() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "n1", &fake, &[]);
        let (out, doc) = Client::new(&mgr)
            .topic("n1")
            .cmd("status")
            .service("svc")
            .run();
        assert_eq!(out.status.code(), Some(0), "{doc}");
        let job = doc["job"].as_str().unwrap().to_owned();
        let system = doc["results"][0]["result"]["system"]
            .as_str()
            .unwrap_or_else(|| panic!("{doc}"))
            .to_owned();
        let ep = mgr.ep("mgmt_endpoint");
        // With the key that asked: the results are sealed to it.
        let key = mgr.pki.as_ref().unwrap().client_key();
        let out = run(&[
            "mgmt", "-e", &ep, "-k", &key, "job", &job, "--format", "table",
        ]);
        let (table, err) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{err}");
        let row = table
            .lines()
            .find(|l| l.starts_with("n1"))
            .unwrap_or_else(|| panic!("no row for n1:\n{table}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        // NODE SYSTEM STATUS RC TIME OUTPUT...
        assert_eq!(&cols[..4], ["n1", system.as_str(), "ok", "0"], "{table}");
        assert!(cols[4].ends_with("ms") || cols[4].ends_with('s'), "{table}");
        assert!(table.contains("1/1 answered: 1 ok"), "{table}");
    });
}
