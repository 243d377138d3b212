//! `make install` the way packagers run it, and the installed names working.

use crate::util::*;
use std::path::Path;
use std::process::Command;

fn make(args: &[&str]) -> std::process::Output {
    Command::new("make")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("run make")
}

#[test]
fn make_install_honours_destdir_and_prefix_and_uninstall_removes_it() {
    if Command::new("make").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "make is missing on CI");
        eprintln!("SKIP make_install_...: make not found");
        return;
    }
    let dest = tempfile::tempdir().unwrap();
    let destdir = format!("DESTDIR={}", dest.path().display());
    // BIN: the debug binary this test run built, so no release build is needed.
    let binvar = format!("BIN={}", bin());
    let out = make(&["install", &binvar, &destdir, "PREFIX=/usr"]);
    assert!(
        out.status.success(),
        "make install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dest.path().join("usr");
    let main = root.join("bin/service-mgr");
    assert!(main.is_file() && !main.is_symlink());
    for (link, target) in [
        ("sbin/service-mgrd", "../bin/service-mgr"),
        ("sbin/service-mgr-agentd", "../bin/service-mgr"),
        ("bin/service-mgr-client", "service-mgr"),
    ] {
        let path = root.join(link);
        assert_eq!(
            std::fs::read_link(&path).unwrap_or_else(|e| panic!("{link}: {e}")),
            Path::new(target),
            "{link} must be a relative link"
        );
    }
    for file in [
        "share/man/man1/service-mgr-client.1",
        "share/man/man5/service-mgr.conf.5",
        "share/man/man7/service-mgr.7",
        "share/man/man8/service-mgr.8",
        "share/man/man8/service-mgrd.8",
        "share/man/man8/service-mgr-agentd.8",
        "share/bash-completion/completions/service-mgr",
        "share/bash-completion/completions/service-mgr-client",
        "share/zsh/site-functions/_service-mgrd",
        "share/fish/vendor_completions.d/service-mgr-agentd.fish",
        "share/doc/service-mgr/examples/service-mgrd.conf",
        "share/doc/service-mgr/examples/service-mgr-agentd.conf",
        "share/doc/service-mgr/examples/client.conf",
        "share/doc/service-mgr/contrib/systemd/service-mgrd.service",
        "share/doc/service-mgr/contrib/init.d/debian/service-mgr-agentd",
        "share/doc/service-mgr/contrib/rc.d/service-mgrd",
    ] {
        assert!(root.join(file).is_file(), "{file} not installed");
    }

    // The installed names work through their links.
    let v = Command::new(root.join("sbin/service-mgrd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains(env!("CARGO_PKG_VERSION")));
    let h = Command::new(root.join("bin/service-mgr-client"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(h.status.success());
    assert!(String::from_utf8_lossy(&h.stdout).contains("--topic"));

    let out = make(&["uninstall", &destdir, "PREFIX=/usr"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = walk(dest.path())
        .into_iter()
        .filter(|p| !p.is_dir())
        .collect();
    assert!(left.is_empty(), "left after uninstall: {left:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn the_binary_carries_libzmq_inside() {
    // One self-contained file: zmq-sys links libzmq statically.
    let Ok(out) = Command::new("ldd").arg(bin()).output() else {
        eprintln!("SKIP the_binary_carries_libzmq_inside: ldd not found");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ldd: {text}");
    assert!(
        !text.contains("libzmq"),
        "linked against a shared libzmq:\n{text}"
    );
    for line in text.lines() {
        let lib = line.split_whitespace().next().unwrap_or_default();
        let system = [
            "linux-vdso",
            "libc.",
            "libm.",
            "libgcc_s",
            "libstdc++",
            "ld-linux",
            "libpthread",
            "libdl",
            "librt",
            "libutil",
        ]
        .iter()
        .any(|s| lib.contains(s));
        assert!(
            system || lib.starts_with('/'),
            "unexpected shared library {lib}:\n{text}"
        );
    }
}

/// Packagers set CARGO_TARGET_DIR and PREFIX: `make install` used to look in
/// target/release only, shipped the binary unstripped, left SECURITY.md and
/// docs/protocol.md out though the README links them, and installed init
/// scripts that name /usr/sbin whatever the PREFIX.
#[test]
fn make_install_honours_cargo_target_dir_strips_and_names_the_prefix() {
    if Command::new("make").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "make is missing on CI");
        eprintln!("SKIP make_install_honours_cargo_target_dir_...: make not found");
        return;
    }
    let target = tempfile::tempdir().unwrap();
    std::fs::create_dir(target.path().join("release")).unwrap();
    let built = target.path().join("release/service-mgr");
    std::fs::copy(bin(), &built).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let destdir = format!("DESTDIR={}", dest.path().display());
    let make_with_target = |args: &[&str]| {
        Command::new("make")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .env("CARGO_TARGET_DIR", target.path())
            .env_remove("BIN")
            .output()
            .expect("run make")
    };
    // Dry run first: today's Makefile would start a release build here.
    let plan = make_with_target(&["-n", "install", &destdir, "PREFIX=/opt/smgr"]);
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains(&format!("{}", built.display())) && !plan_text.contains("cargo build"),
        "make install does not take the binary from CARGO_TARGET_DIR:\n{plan_text}"
    );
    let out = make_with_target(&["install", &destdir, "PREFIX=/opt/smgr"]);
    assert!(
        out.status.success(),
        "make install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dest.path().join("opt/smgr");
    let installed = std::fs::metadata(root.join("bin/service-mgr"))
        .unwrap()
        .len();
    let original = std::fs::metadata(&built).unwrap().len();
    assert!(
        installed < original / 2,
        "installed binary not stripped: {installed} bytes of {original}"
    );
    let doc = root.join("share/doc/service-mgr");
    for file in [
        "SECURITY.md",
        "BENCHMARKS.md",
        "docs/protocol.md",
        "contrib/service-mgrd.conf",
    ] {
        assert!(
            doc.join(file).is_file(),
            "{file} not installed beside the README that links it"
        );
    }
    for (file, line) in [
        (
            "contrib/init.d/debian/service-mgrd",
            "DAEMON=/opt/smgr/sbin/service-mgrd",
        ),
        (
            "contrib/init.d/debian/service-mgr-agentd",
            "DAEMON=/opt/smgr/sbin/service-mgr-agentd",
        ),
        (
            "contrib/init.d/redhat/service-mgrd",
            "exec=/opt/smgr/sbin/service-mgrd",
        ),
        (
            "contrib/systemd/service-mgr-agentd.service",
            "ExecStart=/opt/smgr/sbin/service-mgr-agentd start",
        ),
        (
            "contrib/rc.d/service-mgrd",
            "command=\"/opt/smgr/sbin/service-mgrd\"",
        ),
    ] {
        let text = std::fs::read_to_string(doc.join(file)).unwrap();
        assert!(
            text.lines().any(|l| l.trim() == line),
            "{file} lacks `{line}`"
        );
    }
}
