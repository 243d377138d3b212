//! `service-mgr-bench`: parse the options, find the executable to measure, run.

use anyhow::{bail, Context, Result};
use clap::Parser;
use service_mgr::exit::Exit;
use service_mgr_bench::BenchArgs;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let outcome = match &args.exe {
        Some(exe) => Ok(exe.clone()),
        None => beside_me(),
    }
    .and_then(|exe| service_mgr_bench::run(&args, &exe));
    match outcome {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("service-mgr-bench: error: {e:#}");
            Exit::Error.into()
        }
    }
}

/// `service-mgr` in this program's directory (cargo's target/PROFILE/). Under
/// `cargo run` (which sets $CARGO) it is built first, in this program's
/// profile, so that the figures are never those of a stale binary.
fn beside_me() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let dir = me.parent().context("this program has no directory")?;
    let exe = dir.join("service-mgr");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let profile = if profile == "debug" { "dev" } else { profile };
        eprintln!("bench: building service-mgr ({profile} profile) ...");
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--package", "service-mgr", "--bin"])
            .args(["service-mgr", "--profile", profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .context("cannot run cargo to build service-mgr")?;
        if !status.success() {
            bail!("building service-mgr failed ({status})");
        }
    }
    if !exe.exists() {
        bail!(
            "no {} (build it with `cargo build --release`, or say which executable with --exe)",
            exe.display()
        );
    }
    Ok(exe)
}
