//! Issue 14.6: a client config file (`client.conf`) holds the manager's
//! endpoint and key, the client key, the format and waits, so that the
//! command is only what to do and where.

use crate::util::*;
use std::path::Path;
use std::process::Command;

/// The client as a user runs it: HOME and XDG_CONFIG_HOME in `home`, no key
/// settings in the environment, nothing but `args` on the command line.
fn client_in(home: &Path, args: &[&str]) -> std::process::Output {
    output(
        Command::new(bin())
            .arg("client")
            .args(args)
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env_remove("SERVICE_MGR_KEY")
            .env_remove("SERVICE_MGR_MANAGER_KEY")
            .env_remove("SERVICE_MGR_CLIENT_CONF"),
    )
}

fn write_conf(home: &Path, text: &str) -> std::path::PathBuf {
    let dir = home.join(".config/service-mgr");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client.conf");
    std::fs::write(&path, text).unwrap();
    path
}

/// Issue 14.6: `service-mgr client -T web -c status -s nginx` and nothing else: the
/// endpoint, both keys and the format come from ~/.config/service-mgr/client.conf.
#[test]
fn the_users_client_conf_is_all_a_command_needs() {
    with_timeout(60, || {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "web1", &fake, &[]);
        wait_registered(&mgr, "web1");
        let home = dir.path().join("home");
        let pki = mgr.pki.as_ref().unwrap();
        // Relative paths in the file are relative to the file.
        let conf_dir = home.join(".config/service-mgr");
        std::fs::create_dir_all(&conf_dir).unwrap();
        std::fs::copy(pki.client_key(), conf_dir.join("mine.key")).unwrap();
        write_conf(
            &home,
            &format!(
                "endpoint = {}\nkey = \"mine.key\"\nmanager_key = {}\nformat = \"json\"\nwait = 10\n",
                toml_str(&mgr.ep("frontend_endpoint")),
                toml_str(mgr.ready["manager_key"].as_str().unwrap()),
            ),
        );
        let out = client_in(&home, &["-T", "web1", "-c", "status", "-s", "nginx"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("json as client.conf says: {e}: {stderr}"));
        assert_eq!(doc["results"][0]["node"], "web1", "{doc}");
        assert_eq!(doc["results"][0]["status"], "ok", "{doc}");

        // The command line wins over the file.
        let out = client_in(
            &home,
            &[
                "-T", "web1", "-c", "status", "-s", "nginx", "--format", "table",
            ],
        );
        let table = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{table}");
        assert!(
            serde_json::from_slice::<serde_json::Value>(&out.stdout).is_err()
                && table.contains("web1"),
            "{table}"
        );
        // --conf none reads no file: the default endpoint has no manager of ours.
        let out = client_in(
            &home,
            &[
                "--conf", "none", "-T", "web1", "-c", "status", "-s", "nginx", "-t", "200", "-r",
                "1",
            ],
        );
        assert_ne!(out.status.code(), Some(0));
    });
}

/// A typo in client.conf is an error naming the file and the known keys, not a
/// setting silently ignored (and a request sent somewhere else).
#[test]
fn a_bad_client_conf_is_named_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let path = write_conf(&home, "endpiont = \"tcp://m1:5500\"\n");
    let out = client_in(&home, &["-T", "web1", "-c", "status", "-s", "nginx"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&path.display().to_string())
            && stderr.contains("endpiont")
            && stderr.contains("keys: endpoint"),
        "{stderr}"
    );
    // SERVICE_MGR_CLIENT_CONF names another file; one that is missing is an error too.
    let missing = dir.path().join("nope.conf");
    let out = output(
        Command::new(bin())
            .args(["client", "-T", "web1", "-c", "status", "-s", "nginx"])
            .env("HOME", &home)
            .env("SERVICE_MGR_CLIENT_CONF", &missing),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&missing.display().to_string())
            && stderr.contains("SERVICE_MGR_CLIENT_CONF=none"),
        "{stderr}"
    );
}
