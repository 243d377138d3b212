//! The README's quick start, run as written: its shell block, line by line,
//! in a fresh shell of a new user (`nobody` where the tests run as root).
//!
//! Regression test for issue 15: `keygen` failed for a new user, the next
//! commands were not on PATH, and every later step failed with them.
//!
//! What the test sets, as a machine would and the README allows: HOME (a new
//! user's), SERVICE_MGR_PORT (free ports; the README mentions it), and a
//! `service` on PATH that only records its calls, so that no real service of
//! this machine is asked. Each line is retried for a while when it fails,
//! as a person would a moment later: the daemons started with `&` take a
//! moment to meet. A line that never succeeds fails the test.

use crate::util::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The shell block under "## Quick start: one machine".
fn quick_start() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Quick start: one machine")
        .nth(1)
        .expect("README has a quick start");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the quick start has a sh block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// A base port whose five daemon ports (base + 0, 100, 200, 300, 500) are free.
fn free_base_port() -> u16 {
    let seed = std::process::id() as u16;
    (0..200)
        .map(|i| 20000 + (seed.wrapping_mul(7).wrapping_add(i * 97) % 30000))
        .find(|base| {
            [0u16, 100, 200, 300, 500]
                .iter()
                .all(|off| std::net::TcpListener::bind(("0.0.0.0", base + off)).is_ok())
        })
        .expect("no free ports")
}

/// The script: background lines as they are, every other line retried.
fn script(lines: &[String]) -> String {
    let mut s = String::from(
        "set -u\n\
         run_line() {\n\
           local line; line=$(cat)\n\
           for _ in $(seq 1 150); do\n\
             if eval \"$line\"; then echo \"== ok: $line\" >&2; return 0; fi\n\
             sleep 0.2\n\
           done\n\
           echo \"== FAILED for 30 s: $line\" >&2; exit 1\n\
         }\n",
    );
    for line in lines {
        let code = line.split(" #").next().unwrap_or(line).trim_end();
        if code.ends_with('&') {
            s.push_str(line);
            s.push('\n');
        } else {
            s.push_str(&format!("run_line <<'SMGR_LINE'\n{line}\nSMGR_LINE\n"));
        }
    }
    s
}

/// Make `dir` and everything in it nobody's, where the tests run as root.
fn hand_over(dir: &Path) {
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    if dir.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            hand_over(&e.unwrap().path());
        }
    }
}

/// Kills the whole process group (the shell and the daemons it started) on drop.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

#[test]
fn the_readme_quick_start_runs_as_written_for_a_new_user() {
    with_timeout(180, || {
        let lines = quick_start();
        assert!(lines.len() > 10, "{lines:?}");
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        // Where the user typed `make`: target/release/service-mgr exists.
        let work = tmp.path().join("src");
        std::fs::create_dir_all(work.join("target/release")).unwrap();
        std::fs::copy(bin(), work.join("target/release/service-mgr")).unwrap();
        let fakebin = tmp.path().join("fakebin");
        std::fs::create_dir_all(&fakebin).unwrap();
        std::fs::rename(fake_service(&fakebin), fakebin.join("service")).unwrap();
        let script_path = tmp.path().join("quick-start.sh");
        std::fs::write(&script_path, script(&lines)).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        for d in [&work, &fakebin, &home, &script_path.clone()] {
            hand_over(d);
        }
        let base = free_base_port();
        let mut cmd = Command::new("bash");
        as_newbie(cmd.arg(&script_path), &home)
            .current_dir(&work)
            .env("SERVICE_MGR_PORT", base.to_string())
            .env(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", fakebin.display()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().unwrap();
        let _group = Group(child.id() as i32);
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the quick start failed after {:?}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            started.elapsed()
        );
        let calls: Vec<String> = calls(&fakebin);
        assert_eq!(calls, ["cron status"], "{stderr}");
        assert!(stdout.contains("cron status ok"), "{stdout}");
    });
}
