//! The shipped completion scripts in real shells.

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn script(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("completions")
        .join(file)
}

/// Whether `shell` can be run; if not, skip loudly, or fail on CI for bash.
fn have(shell: &str, test: &str) -> bool {
    if Command::new(shell)
        .args(["-c", "exit 0"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        shell != "bash" || std::env::var_os("CI").is_none(),
        "{shell} is missing on CI"
    );
    eprintln!("SKIP {test}: {shell} not found");
    false
}

/// A directory with `service-mgr` and its link names, put first on PATH, as
/// `make install` would have them.
fn installed() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "service-mgr",
        "service-mgrd",
        "service-mgr-agentd",
        "service-mgr-client",
    ] {
        std::os::unix::fs::symlink(bin(), dir.path().join(name)).unwrap();
    }
    dir
}

fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The words bash hands a completion function for `line`: it breaks at
/// blanks and also at `:` and `=` (COMP_WORDBREAKS), which it keeps as words.
fn comp_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    for token in line.split(' ').filter(|t| !t.is_empty()) {
        let mut word = String::new();
        for c in token.chars() {
            if c == ':' || c == '=' {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                words.push(c.to_string());
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
    }
    if line.ends_with(' ') {
        words.push(String::new());
    }
    words
}

/// What bash completes at the end of `line` with the script of the line's
/// command (`completions/NAME.bash`), and how long it took.
fn bash_complete(path: &str, line: &str) -> (Vec<String>, Duration) {
    let words = comp_words(line);
    let name = &words[0];
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect();
    let program = format!(
        r#"source '{script}' || exit 9
f=$(complete -p {name} | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
"$f" {name} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        script = script(&format!("{name}.bash")).display(),
        words = quoted.join(" "),
    );
    let started = Instant::now();
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .env("PATH", path)
        .env_remove("SERVICE_MGR_KEY")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offered = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    (offered, took)
}

/// Regression: clap_complete 4.6.11 completed nothing after `service-mgr
/// SUBCOMMAND` in bash (clap-rs/clap#6421; xtask fixes the script).
#[test]
fn bash_completes_the_options_of_service_mgr_subcommands() {
    if !have(
        "bash",
        "bash_completes_the_options_of_service_mgr_subcommands",
    ) {
        return;
    }
    let bin_dir = installed();
    let path = path_with(bin_dir.path());
    for (line, want) in [
        ("service-mgr client --fail", "--fail-fast"),
        ("service-mgr mgmt --keys", "--keys-dir"),
        ("service-mgr install-links --he", "--help"),
    ] {
        let (offered, _) = bash_complete(&path, line);
        assert_eq!(offered, [want], "{line}");
    }
}

#[test]
fn bash_offers_the_service_commands_and_mgmt_commands() {
    if !have("bash", "bash_offers_the_service_commands_and_mgmt_commands") {
        return;
    }
    let bin_dir = installed();
    let path = path_with(bin_dir.path());
    for line in [
        "service-mgr-client -c ",
        "service-mgr client -T any --cmd re",
    ] {
        let (offered, _) = bash_complete(&path, line);
        assert!(offered.contains(&"restart".into()), "{line}: {offered:?}");
    }
    let (offered, _) = bash_complete(&path, "service-mgr mgmt ");
    assert!(offered.contains(&"agents".into()), "{offered:?}");
    let (offered, _) = bash_complete(&path, "service-mgr mgmt -e tcp://h:5800 manager.");
    assert!(offered.contains(&"manager.agents".into()), "{offered:?}");
}

#[test]
fn completion_hints_neither_show_in_help_nor_restrict_what_is_accepted() {
    // An agent may allow other commands (custom_commands): with --custom,
    // -c takes any word; the hints are no list that clap enforces.
    let out = run(&[
        "client",
        "--custom",
        "-e",
        "tcp://127.0.0.1:1",
        "-r",
        "1",
        "-t",
        "50",
        "-T",
        "any",
        "-c",
        "force-reload",
        "-s",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1), "no answer, not a usage error");
    for args in [&["--help"][..], &["client", "--help"], &["mgmt", "--help"]] {
        let help = String::from_utf8_lossy(&run(args).stdout).into_owned();
        assert!(
            !help.contains("possible values"),
            "{args:?} --help lists possible values"
        );
    }
}
