//! A new user's first hour (issue 15): what broke or confused someone who
//! followed the README on a fresh machine, as a non-root user.

use crate::util::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// `service-mgr keygen --role client` failed for a new user: "cannot create
/// ~/.config/service-mgr/client.key: No such file or directory".
#[test]
fn keygen_for_a_new_user_makes_its_private_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("newbie");
    let out = as_newbie(
        Command::new(bin()).args(["keygen", "--role", "client"]),
        &home,
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = home.join(".config/service-mgr");
    assert!(dir.join("client.key").is_file() && dir.join("client.key.pub").is_file());
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

/// The agent failed the same way when its `key_file` folder did not exist.
#[test]
fn agent_makes_the_folder_of_its_key_file() {
    with_timeout(60, || {
        let tmp = tempfile::tempdir().unwrap();
        let svc = fake_service(tmp.path());
        let key = tmp.path().join("state/keys/n1.key");
        let key_opt = format!("key_file={}", toml_str(&key.display().to_string()));
        let ctx = zmq::Context::new();
        let (_backend, backend_ep) = bind_loopback(&ctx, zmq::XPUB);
        let (_sink, sink_ep) = bind_loopback(&ctx, zmq::PULL);
        let agent = agent_at(
            &backend_ep,
            &sink_ep,
            "n1",
            &svc,
            tmp.path(),
            &["-O", &key_opt],
        );
        assert!(
            key.is_file(),
            "no key at {}:\n{}",
            key.display(),
            agent.log_text()
        );
    });
}

/// `SERVICE_MGR_KEY=/nonexistent` silently sent unsigned requests; it is now
/// the same error as `-k /nonexistent`, and `SERVICE_MGR_KEY=none` is the
/// way to send unsigned on purpose.
#[test]
fn a_missing_key_named_by_the_environment_is_an_error() {
    with_timeout(60, || {
        let mgr = manager(&[]);
        let frontend = mgr.ep("frontend_endpoint");
        let ask = |env: Option<&str>, key: Option<&str>| {
            let mut cmd = Command::new(bin());
            cmd.args([
                "client", "-e", &frontend, "-T", "any", "-c", "status", "-s", "cron", "-w", "1",
            ]);
            if let Some(k) = key {
                cmd.args(["-k", k]);
            }
            match env {
                Some(v) => cmd.env("SERVICE_MGR_KEY", v),
                None => cmd.env_remove("SERVICE_MGR_KEY"),
            };
            let out = cmd.output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (by_flag, flag_err) = ask(None, Some("/nonexistent/client.key"));
        let (by_env, env_err) = ask(Some("/nonexistent/client.key"), None);
        assert_ne!(by_flag, Some(0), "{flag_err}");
        assert_eq!(by_env, by_flag, "SERVICE_MGR_KEY: {env_err}");
        assert!(
            env_err.contains("/nonexistent/client.key") && env_err.contains("SERVICE_MGR_KEY"),
            "{env_err}"
        );
        // On purpose: unsigned, which this secure manager refuses by name.
        let (_, unsigned_err) = ask(Some("none"), None);
        assert!(!unsigned_err.contains("/nonexistent"), "{unsigned_err}");
    });
}

/// `allowed_commands = ["restrat"]` was accepted silently; the agent now
/// refuses to start and names the nearest command.
#[test]
fn an_agent_with_an_unknown_command_in_its_config_does_not_start() {
    with_timeout(30, || {
        let tmp = tempfile::tempdir().unwrap();
        let key = format!(
            "key_file={}",
            toml_str(&tmp.path().join("a.key").display().to_string())
        );
        let out = output(
            Command::new(bin())
                .args([
                    "agent",
                    "-f",
                    "/dev/null",
                    "-n",
                    "n1",
                    "-O",
                    "mgmt_endpoint=tcp://127.0.0.1:*",
                ])
                .args([
                    "-O",
                    &key,
                    "-O",
                    r#"allowed_commands=["status", "restrat"]"#,
                    "start",
                ]),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("unknown command \"restrat\" (did you mean \"restart\"?)"),
            "{err}"
        );
    });
}

/// A non-root `mgmt keys list` on a key store it cannot write failed trying
/// to create pending/; listing now reads only.
#[test]
fn keys_list_reads_a_store_it_cannot_write() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(keys.join("accepted")).unwrap();
    let pk = tmp.path().join("web1.key");
    let made = run(&[
        "keygen",
        "--role",
        "agent",
        "--name",
        "web1",
        "-o",
        pk.to_str().unwrap(),
    ]);
    assert!(made.status.success());
    let imported = run(&[
        "mgmt",
        "keys",
        "--keys-dir",
        keys.to_str().unwrap(),
        "import",
        &format!("{}.pub", pk.display()),
    ]);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    std::fs::remove_dir(keys.join("pending")).ok();
    std::fs::remove_dir(keys.join("rejected")).ok();
    // Readable by all, writable by none: as a store shared read-only with operators.
    for entry in std::fs::read_dir(keys.join("accepted")).unwrap() {
        std::fs::set_permissions(
            entry.unwrap().path(),
            std::fs::Permissions::from_mode(0o444),
        )
        .unwrap();
    }
    for dir in [keys.join("accepted"), keys.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let out = as_newbie(
        Command::new(bin()).args(["mgmt", "keys", "--keys-dir", keys.to_str().unwrap(), "list"]),
        &tmp.path().join("home"),
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("accepted") && text.contains("web1"), "{text}");
    assert!(!keys.join("pending").exists(), "keys list created pending/");
}

/// The demo printed JSON even on a terminal, did not say why it picked the
/// service it asked about, and a stopped service read as a failure.
#[test]
fn demo_on_a_terminal_shows_a_table_and_explains_itself() {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "script(1) is missing on CI"
        );
        eprintln!("SKIP demo_on_a_terminal_...: script(1) not found (util-linux)");
        return;
    }
    with_timeout(60, || {
        // script(1) gives the demo a terminal, as a person's shell would.
        let out = output(Command::new("script").args([
            "-qec",
            &format!("{} demo -s stopped-service", bin()),
            "/dev/null",
        ]));
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("NODE") && text.contains("STATUS"),
            "no table on a terminal:\n{text}"
        );
        assert!(text.contains("the round trip worked"), "{text}");
        let picked = output(Command::new(bin()).arg("demo"));
        let err = String::from_utf8_lossy(&picked.stderr);
        assert!(
            err.contains("demo: asking about ") && err.contains("-s NAME"),
            "{err}"
        );
        // Piped, the results stay JSON (tests/cli.rs checks their shape).
        assert!(serde_json::from_slice::<serde_json::Value>(&picked.stdout).is_ok());
    });
}

/// What the client can check itself is a usage error (exit 2), said at once,
/// not exit 1 or 3 after asking the manager (issue 15's list, one case each).
#[test]
fn client_usage_errors_exit_2_before_asking_anyone() {
    // Nothing listens here: a check that asked the manager would exit 1.
    let nowhere = "tcp://127.0.0.1:9";
    let cases: &[(&[&str], &str)] = &[
        (&["-T", "", "-c", "status", "-s", "cron"], "is not a topic"),
        (&["-T", "any", "-c", "status", "-s", "../x"], "service name"),
        (
            &["-T", "any", "-c", "STATUS", "-s", "cron"],
            "lower-case (say -c status)",
        ),
        (
            &["-T", "any", "-c", "bogus", "-s", "cron"],
            "unknown command",
        ),
        (
            &["-T", "any", "-c", "restrat", "-s", "cron"],
            "did you mean restart?",
        ),
        (
            &["-T", "any", "-c", "restart", "-s", "cron", "--batch", "0"],
            "--batch 0",
        ),
        (
            &["-T", "web*", "-c", "status", "-s", "cron"],
            "topics match exactly; to pick nodes by name pattern say -G",
        ),
        (
            &[
                "-e",
                "localhost:5500",
                "-T",
                "any",
                "-c",
                "status",
                "-s",
                "cron",
            ],
            "say tcp://HOST:PORT",
        ),
    ];
    for (args, needle) in cases {
        let mut cmd = Command::new(bin());
        cmd.arg("client").env("SERVICE_MGR_KEY", "none");
        if !args.contains(&"-e") {
            cmd.args(["-e", nowhere]);
        }
        let out = output(cmd.args(*args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A custom command is fine when said so (it then fails only to connect).
    let out = output(Command::new(bin()).args([
        "client",
        "-e",
        nowhere,
        "-t",
        "100",
        "-r",
        "1",
        "-T",
        "any",
        "-c",
        "condrestart",
        "--custom",
        "-s",
        "cron",
    ]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With an agent's key pending, `mgmt agents` said "no agent has announced
/// itself" and the client "no node answered"; the accept hint was only in
/// the manager's log.
#[test]
fn pending_agents_are_shown_where_the_operator_looks() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let svc = fake_service(dir.path());
        let mgr = manager(&[]);
        // Its own key, made on its first start: not in the manager's store.
        let key_opt = format!(
            "key_file={}",
            toml_str(&dir.path().join("newnode.key").display().to_string())
        );
        let _agent = agent_unregistered(&mgr, "newnode", &svc, &["-O", &key_opt]);
        let mgmt_ep = mgr.ep("mgmt_endpoint");
        let table = wait_for(20, "the pending agent in mgmt agents", || {
            let out = run(&["mgmt", "-e", &mgmt_ep, "agents", "--format", "table"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("pending").then_some(text)
        });
        assert!(table.contains("newnode"), "{table}");
        assert!(
            table.contains("1 agent key pending: service-mgr mgmt keys accept newnode"),
            "{table}"
        );
        let (out, _) = Client::new(&mgr)
            .topic("any")
            .cmd("status")
            .service("cron")
            .text();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("1 agent key pending: service-mgr mgmt keys list"),
            "{err}"
        );
    });
}

/// An unknown topic (`-T web` for node web1, 0.1's prefix habit) gave
/// "0 expected" and nothing else; the manager now names close topics.
#[test]
fn an_unknown_topic_names_the_close_ones() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let svc = fake_service(dir.path());
        let mgr = manager(&[]);
        let _agent = agent(&mgr, "web1", &svc, &["-O", r#"topics=["webfarm"]"#]);
        let (out, _) = Client::new(&mgr)
            .topic("web")
            .cmd("status")
            .service("cron")
            .text();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(
            err.contains("no agent has the topic \"web\"; topics match exactly (-G globs node names); known and close: web1, webfarm"),
            "{err}"
        );
    });
}
