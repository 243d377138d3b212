//! Link the C++ runtime that the vendored libzmq needs, and the unwinder, statically.
//!
//! zmq-sys builds libzmq with the `cc` crate, which asks for `-lstdc++`. The
//! linker takes the first `libstdc++.{so,a}` it finds on the search path, so a
//! directory of our own holding only `libstdc++.a` makes that request link the
//! archive: only the few objects libzmq uses end up in the binary, instead of
//! mapping all of libstdc++.so (and libm.so) into every process. That saves
//! about 1.5 MiB of resident memory in each daemon.
//!
//! The unwinder goes the same way: Rust's std asks for `-lgcc_s` (the shared
//! libgcc, for `_Unwind_*` only); the same directory holds the compiler's
//! `libgcc_eh.a` under the name `libgcc_s.a`, so the unwinder is linked in as
//! `gcc -static-libgcc` would, and libgcc_s.so is not loaded at start (about
//! 0.1 MiB of an idle agent's RSS, and its constructor's CPUID probing).
//!
//! Set `SERVICE_MGR_DYNAMIC_LIBSTDCXX=1` to link both shared libraries instead.
//! Where a static archive is not installed (e.g. libstdc++-dev without the .a),
//! the build falls back to the shared library with a warning.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SERVICE_MGR_DYNAMIC_LIBSTDCXX");
    println!("cargo:rerun-if-env-changed=CXX");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    // Only GNU/Linux links libstdc++ through `-lstdc++`; leave others alone.
    if target_os != "linux" || target_env != "gnu" {
        return;
    }
    if env::var_os("SERVICE_MGR_DYNAMIC_LIBSTDCXX").is_some_and(|v| v != "0" && !v.is_empty()) {
        return;
    }
    let dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("static-cxx");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/static-cxx");
    let mut linked = false;
    // (archive the compiler has, name the linker is asked for, what it is)
    for (archive, name, what) in [
        ("libstdc++.a", "libstdc++.a", "libstdc++"),
        ("libgcc_eh.a", "libgcc_s.a", "libgcc_s (the unwinder)"),
    ] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        let Some(found) = compiler_archive(archive) else {
            println!(
                "cargo:warning=no static {archive} found (install the compiler's development package); using the shared {what}"
            );
            continue;
        };
        match std::os::unix::fs::symlink(&found, &link) {
            Ok(()) => linked = true,
            Err(e) => println!(
                "cargo:warning=cannot link {}: {e}; using the shared {what}",
                link.display()
            ),
        }
    }
    if linked {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
}

/// Where the C++ compiler keeps the static archive `name`, if it has one.
fn compiler_archive(name: &str) -> Option<PathBuf> {
    let target = env::var("TARGET").unwrap_or_default();
    let candidates = [
        env::var("CXX").ok(),
        Some(format!("{target}-g++")),
        Some("c++".to_owned()),
        Some("g++".to_owned()),
    ];
    for cxx in candidates.into_iter().flatten() {
        let Ok(out) = Command::new(&cxx)
            .arg(format!("-print-file-name={name}"))
            .output()
        else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        // An unknown file is printed back as its bare name.
        if path.is_absolute() && path.is_file() {
            return Some(path);
        }
    }
    None
}
