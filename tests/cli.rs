//! The multicall command line, through the real binary and real symlinks.

use crate::util::*;
use std::process::Command;

#[test]
fn link_names_dispatch_and_renamed_binary_gets_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["install-links", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, needle) in [
        ("service-mgrd", "service manager daemon"),
        ("service-mgr-agentd", "agent"),
        ("service-mgr-client", "-T, --topic"),
    ] {
        let link = dir.path().join(name);
        assert!(link.is_symlink(), "{name} not created");
        let help = Command::new(&link).arg("--help").output().unwrap();
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains(needle), "{name} --help: {text}");
        for flag in ["--version", "-v"] {
            let v = Command::new(&link).arg(flag).output().unwrap();
            assert!(v.status.success(), "{name} {flag}");
            assert!(String::from_utf8_lossy(&v.stdout).contains(env!("CARGO_PKG_VERSION")));
        }
    }
    // A renamed copy: exit 2 and exactly one clear line.
    let renamed = dir.path().join("service-mgr-1.2");
    std::os::unix::fs::symlink(bin(), &renamed).unwrap();
    let out = Command::new(&renamed).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("service-mgr-1.2") && err.contains("service-mgrd"),
        "{err}"
    );
}

#[test]
fn every_subcommand_has_help_and_version() {
    for sub in ["daemon", "agent", "client", "mgmt", "demo"] {
        let out = run(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
        let out = run(&[sub, "--version"]);
        assert!(out.status.success(), "{sub} --version");
    }
    let out = run(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn bad_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("agentd.conf");
    std::fs::write(
        &conf,
        "[Default]\nmanager_endpoint = tcp://localhost:5600\ncommand_timeout = soon\n",
    )
    .unwrap();
    let out = run(&["agent", "-f", conf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(conf.to_str().unwrap())
            && err.contains("line 3")
            && err.contains("command_timeout"),
        "{err}"
    );
}

#[test]
fn demo_runs_with_no_config_and_no_root() {
    with_timeout(60, || {
        let out = run(&["demo"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let r = &v[0]["result"];
        assert!(r["returncode"].is_i64() && r["node"].is_string(), "{v}");
    });
}
