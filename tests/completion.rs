//! The shipped completion scripts in real shells: the client's commands,
//! `mgmt`'s commands, and -T/-N asked of a running manager (and given up
//! quickly when it does not answer).

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

/// An endpoint that accepts connections and never answers, like a hung manager.
fn silent_endpoint() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = format!("tcp://{}", l.local_addr().unwrap());
    (l, ep)
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
fn bash_completes_the_managers_nodes() {
    if !have("bash", "bash_completes_the_managers_nodes") {
        return;
    }
    with_timeout(60, || {
        let bin_dir = installed();
        let path = path_with(bin_dir.path());
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "compl-web1", &fake, &["--topics", "web"]);
        let ep = mgr.ep("frontend_endpoint");
        let key = mgr.pki.as_ref().unwrap().client_key();
        let mk = mgr.pki.as_ref().unwrap().path("state/manager.key.pub");
        for name in ["service-mgr-client", "service-mgr client"] {
            let line = format!("{name} -e {ep} -k {key} --manager-key {mk} -T ");
            let (offered, _) = bash_complete(&path, &line);
            assert_eq!(offered, ["any", "compl-web1"], "{line}");
            let line =
                format!("{name} --endpoint={ep} --key {key} --manager-key={mk} -N other,compl");
            let (offered, _) = bash_complete(&path, &line);
            assert_eq!(offered, ["other,compl-web1"], "{line}");
        }
        // Nothing is run on a node to find them.
        assert!(calls(dir.path()).is_empty(), "{:?}", calls(dir.path()));

        // A manager that does not answer: `any` only, and at once.
        let (_hole, silent) = silent_endpoint();
        for ep in [silent.as_str(), "tcp://127.0.0.1:1"] {
            let line = format!("service-mgr-client -e {ep} -T ");
            let (offered, took) = bash_complete(&path, &line);
            assert_eq!(offered, ["any"], "{line}");
            assert!(took < Duration::from_secs(1), "{line}: took {took:?}");
        }
    });
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
        for hidden in ["possible values", "SERVICE_MGR_COMPLETE", "complete"] {
            assert!(!help.contains(hidden), "{args:?} --help shows {hidden}");
        }
    }
    // Without the `--` the scripts put first, the variable changes nothing.
    let out = Command::new(bin())
        .args(["mgmt", "--help"])
        .env("SERVICE_MGR_COMPLETE", "topics")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
}

#[test]
fn zsh_and_fish_scripts_load_and_complete_the_managers_nodes() {
    let zsh = have(
        "zsh",
        "zsh_and_fish_scripts_load_and_complete_the_managers_nodes (zsh)",
    );
    let fish = have(
        "fish",
        "zsh_and_fish_scripts_load_and_complete_the_managers_nodes (fish)",
    );
    if !zsh && !fish {
        return;
    }
    with_timeout(60, move || {
        let bin_dir = installed();
        let path = path_with(bin_dir.path());
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_service(dir.path());
        let mgr = manager(&[]);
        let _a = agent(&mgr, "compl-db1", &fake, &[]);
        let ep = mgr.ep("frontend_endpoint");
        let key = mgr.pki.as_ref().unwrap().client_key();
        let mk = mgr.pki.as_ref().unwrap().path("state/manager.key.pub");
        if zsh {
            // The helper the _arguments specs call, with compadd and compdef stubbed:
            // driving zsh's completion system needs a terminal.
            for name in ["service-mgr", "service-mgr-client"] {
                let program = format!(
                    r#"compdef() {{ : }}
compset() {{ : }}
compadd() {{ print -l -- ${{(P)argv[-1]}} }}
source '{}'
words=(service-mgr-client -e '{ep}' -k '{key}' --manager-key '{mk}' -T '')
CURRENT=8
_service_mgr_targets -J -default- topics"#,
                    script(&format!("_{name}")).display()
                );
                let out = Command::new("zsh")
                    .args(["-f", "-c", &program])
                    .env("PATH", &path)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    text.lines().any(|l| l == "compl-db1"),
                    "zsh {name}: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if fish {
            for (name, line, want) in [
                (
                    "service-mgr-client",
                    "service-mgr-client -c ".to_string(),
                    "restart",
                ),
                ("service-mgr", "service-mgr mgmt ".into(), "agents"),
                (
                    "service-mgr-client",
                    format!("service-mgr-client -e {ep} -k {key} --manager-key {mk} -T "),
                    "compl-db1",
                ),
                (
                    "service-mgr",
                    format!("service-mgr client -e {ep} -k {key} --manager-key {mk} -N x,"),
                    "x,compl-db1",
                ),
            ] {
                let program = format!(
                    "source '{}'; complete -C '{line}'",
                    script(&format!("{name}.fish")).display()
                );
                let out = Command::new("fish")
                    .args(["--no-config", "-c", &program])
                    .env("PATH", &path)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    text.lines().any(|l| l.split('\t').next() == Some(want)),
                    "fish {line}: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    });
}
