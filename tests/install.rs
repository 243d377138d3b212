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
