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
