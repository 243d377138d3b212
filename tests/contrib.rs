//! The service files under contrib/: their static checks, and the Debian
//! init script run through service(8) where that can be done safely.

use crate::util::*;
use std::path::Path;
use std::process::Command;

fn script(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn show(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn init_scripts_and_units_pass_their_checks() {
    if Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "shellcheck is missing on CI (.ci/run installs it)"
        );
        eprintln!("SKIP init_scripts_and_units_pass_their_checks: shellcheck not found (apt-get install shellcheck)");
        return;
    }
    let out = Command::new("sh")
        .arg(script("tests/contrib/check-scripts.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

/// Why the Debian service(8) test cannot run here, if it cannot.
fn debian_service_unavailable() -> Option<&'static str> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (it installs /etc/init.d/service-mgrd for a moment)");
    }
    if !Path::new("/usr/sbin/service").exists() || !Path::new("/etc/debian_version").exists() {
        return Some("not a Debian host with /usr/sbin/service");
    }
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() == "systemd" || Path::new("/run/systemd/system").exists() {
        return Some("systemd is PID 1: service(8) would go through systemctl");
    }
    for tool in ["start-stop-daemon", "python3", "timeout"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some("start-stop-daemon, python3 or timeout missing");
        }
    }
    None
}

#[test]
fn debian_init_script_starts_reloads_restarts_and_stops_the_daemon() {
    if let Some(why) = debian_service_unavailable() {
        eprintln!("SKIP debian_init_script_...: {why}");
        return;
    }
    with_timeout(300, || {
        let out = Command::new("bash")
            .arg(script("tests/contrib/debian-service.sh"))
            .arg(bin())
            .output()
            .unwrap();
        if out.status.code() == Some(77) {
            eprintln!("SKIP debian_init_script_...: {}", show(&out));
            return;
        }
        assert!(out.status.success(), "{}", show(&out));
    });
}

/// The Debian init script used to exit 0 silently when $DAEMON was missing
/// (e.g. installed with PREFIX=/usr/local while it expects /usr/sbin).
#[test]
fn debian_init_script_says_when_its_daemon_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["service-mgrd", "service-mgr-agentd"] {
        let text =
            std::fs::read_to_string(script(&format!("contrib/init.d/debian/{name}"))).unwrap();
        let missing = dir.path().join("sbin").join(name);
        // A copy that reads its defaults from the temp dir (never /etc/default)
        // and expects the daemon where there is none.
        let copy = dir.path().join(name);
        let text = text
            .replace(
                "/etc/default/",
                &format!("{}/defaults/", dir.path().display()),
            )
            .replace(
                &format!("DAEMON=/usr/sbin/{name}"),
                &format!("DAEMON={}", missing.display()),
            );
        std::fs::write(&copy, text).unwrap();
        let start = Command::new("sh").arg(&copy).arg("start").output().unwrap();
        assert_eq!(
            start.status.code(),
            Some(5),
            "{name} start: {}",
            show(&start)
        );
        let err = String::from_utf8_lossy(&start.stderr);
        assert!(
            err.contains(&missing.display().to_string()) && err.contains("DAEMON"),
            "{name} start must name the missing binary and the setting: {err}"
        );
        let stop = Command::new("sh").arg(&copy).arg("stop").output().unwrap();
        assert_eq!(stop.status.code(), Some(0), "{name} stop: {}", show(&stop));
    }
}

/// The systemd units set no LimitNOFILE: at the soft limit of 1024, 1,100 raw
/// TCP connects to the manager made every legitimate request time out.
#[test]
fn systemd_units_raise_the_open_files_limit() {
    for unit in [
        "contrib/systemd/service-mgrd.service",
        "contrib/systemd/service-mgr-agentd.service",
    ] {
        let text = std::fs::read_to_string(script(unit)).unwrap();
        let service = text
            .split("\n[")
            .find(|s| s.starts_with("Service]"))
            .unwrap_or_else(|| panic!("{unit} has no [Service] section"));
        let limit = service
            .lines()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .unwrap_or_else(|| panic!("{unit} sets no LimitNOFILE"));
        // SOFT:HARD or one value for both; the daemons raise soft to hard.
        let hard = limit.trim().rsplit(':').next().unwrap_or_default();
        let n: u64 = hard
            .parse()
            .unwrap_or_else(|e| panic!("{unit}: {limit}: {e}"));
        assert!(
            n >= 8192,
            "{unit}: LimitNOFILE={n}, the manager wants 8192 or more"
        );
    }
}
