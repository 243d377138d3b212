//! Man pages, completions and example configs against the code they describe.

use serde::{de::DeserializeOwned, Serialize};
use service_mgr::config::{AgentConfig, ManagerConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Regenerate `what` into a temp dir; the names of the files that differ
/// from (or are missing in) the committed `dir`.
fn drift(what: &str, dir: &str) -> (Vec<String>, usize) {
    let tmp = tempfile::tempdir().unwrap();
    if let Err(e) = xtask::generate(what, tmp.path()) {
        panic!("generate {what}: {e:#}");
    }
    let mut differ = Vec::new();
    let mut count = 0;
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        count += 1;
        let fresh = std::fs::read(entry.path()).unwrap();
        if std::fs::read(repo(dir).join(&name)).ok() != Some(fresh) {
            differ.push(format!("{dir}/{name}"));
        }
    }
    (differ, count)
}

#[test]
fn committed_man_pages_and_completions_match_the_command_line() {
    // Drift between --help and the pages: regenerate and commit (`make docs`).
    let (mut differ, pages) = drift("man", "man");
    let (more, scripts) = drift("completions", "completions");
    differ.extend(more);
    assert_eq!(
        pages, 4,
        "service-mgr.8, service-mgrd.8, service-mgr-agentd.8, service-mgr-client.1"
    );
    assert_eq!(scripts, 12, "bash, zsh and fish for four names");
    assert!(
        differ.is_empty(),
        "out of date: {differ:?}; run `make docs` (cargo xtask docs) and commit the result"
    );
    // No stale scripts for names we no longer have.
    let committed = std::fs::read_dir(repo("completions")).unwrap().count();
    assert_eq!(
        committed, scripts,
        "files in completions/ that nothing generates"
    );
}

#[test]
fn the_shipped_binary_offers_no_development_tools() {
    // bench, fuzz targets and doc generation live in bench/, fuzz/ and xtask/.
    let out = Command::new(env!("CARGO_BIN_EXE_service-mgr"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("demo"), "{help}");
    let script = std::fs::read_to_string(repo("completions/service-mgr.bash")).unwrap();
    for tool in ["bench", "generate"] {
        assert!(!help.contains(tool), "service-mgr --help offers {tool}");
        assert!(
            !script.contains(&format!("subcmd__{tool}")),
            "the completions offer {tool}"
        );
    }
}

#[test]
fn generated_pages_carry_options_defaults_exit_status_files_and_examples() {
    let client = std::fs::read_to_string(repo("man/service-mgr-client.1")).unwrap();
    for needle in [
        r"\-\-format",
        r"[default: tcp://localhost:5500]",
        ".SH \"EXIT STATUS\"",
        ".SH EXAMPLES",
        r"service\-mgr\-client \-e tcp://localhost:5500 \-T FreeBSD \-c status \-s sshd",
        "NO_COLOR",
    ] {
        assert!(
            client.contains(needle),
            "service-mgr-client.1 lacks {needle}"
        );
    }
    for page in ["service-mgr.8", "service-mgrd.8", "service-mgr-agentd.8"] {
        let text = std::fs::read_to_string(repo(&format!("man/{page}"))).unwrap();
        for needle in [
            ".SH OPTIONS",
            ".SH \"EXIT STATUS\"",
            ".SH FILES",
            ".SH EXAMPLES",
            r"/var/run/service\-mgr/",
            r"/var/log/service\-mgr/",
            r"/etc/service\-mgr/",
        ] {
            assert!(text.contains(needle), "{page} lacks {needle}");
        }
    }
    let main = std::fs::read_to_string(repo("man/service-mgr.8")).unwrap();
    for sub in ["daemon", "agent", "client", "mgmt", "demo", "install-links"] {
        let heading = format!(".SS \"service\\-mgr {}\"", sub.replace('-', "\\-"));
        assert!(main.contains(&heading), "service-mgr.8 lacks {heading}");
    }
    for code in ["3", "4"] {
        assert!(
            main.contains(&format!(".TP\n\\fB{code}\\fR")),
            "exit status {code}"
        );
    }
}

#[test]
fn every_page_renders_without_warnings() {
    if Command::new("man").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "man is missing on CI (.ci/run installs man-db)"
        );
        eprintln!(
            "SKIP every_page_renders_without_warnings: man not found (apt-get install man-db)"
        );
        return;
    }
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo("man"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    assert_eq!(pages.len(), 6, "{pages:?}");
    for page in pages {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8")
            .env("MAN_KEEP_FORMATTING", "")
            .env_remove("PAGER")
            .env_remove("MANPAGER")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{}: exit {:?}\n{err}",
            page.display(),
            out.status.code()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().count() > 20, "{}: {text}", page.display());
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{}: line over 80 columns: {line:?}",
                page.display()
            );
        }
    }
}

#[test]
fn bash_completions_load() {
    for name in [
        "service-mgr",
        "service-mgrd",
        "service-mgr-agentd",
        "service-mgr-client",
    ] {
        let script = repo(&format!("completions/{name}.bash"));
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}' && complete -p {name}",
                script.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every key of a config struct, from its defaults (absent ones as null).
fn keys<T: Serialize + Default>() -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(T::default()).unwrap() {
        serde_json::Value::Object(m) => m,
        other => panic!("config is not an object: {other}"),
    }
}

/// The example file's `# key = value` lines: every key must be there, and
/// uncommented they must give the built-in defaults.
fn check_example<T>(file: &str)
where
    T: Serialize + DeserializeOwned + Default + PartialEq + std::fmt::Debug,
{
    let text = std::fs::read_to_string(repo(file)).unwrap();
    let keys = keys::<T>();
    let mut defaults = String::new();
    for key in keys.keys() {
        let prefix = format!("# {key} = ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{file} does not show {key} (a line `{prefix}...`)"));
        if !keys[key].is_null() {
            defaults.push_str(&line[2..]);
            defaults.push('\n');
        }
    }
    let parsed: T = service_mgr::config::parse(&defaults)
        .unwrap_or_else(|e| panic!("{file}: the commented defaults do not parse: {e:#}"));
    assert_eq!(
        parsed,
        T::default(),
        "{file} shows other values than the defaults"
    );
}

#[test]
fn example_configs_show_every_key_with_its_default() {
    check_example::<ManagerConfig>("contrib/service-mgrd.conf");
    check_example::<AgentConfig>("contrib/service-mgr-agentd.conf");
    // client.conf: every key there, commented out, and the lines parse as one.
    let text = std::fs::read_to_string(repo("contrib/client.conf")).unwrap();
    let lines: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = tempfile::tempdir().unwrap().keep().join("client.conf");
    std::fs::write(&path, &lines).unwrap();
    let conf = service_mgr::config::client::ClientConf::read(&path)
        .unwrap_or_else(|e| panic!("contrib/client.conf: {e:#}"));
    assert!(
        conf.endpoint.is_some()
            && conf.key.is_some()
            && conf.manager_key.is_some()
            && conf.format.is_some()
            && conf.wait.is_some()
            && conf.timeout.is_some()
            && conf.retries.is_some(),
        "contrib/client.conf lacks a key: {conf:?}"
    );
}

#[test]
fn every_config_key_is_in_the_config_page_and_the_readme() {
    let page = std::fs::read_to_string(repo("man/service-mgr.conf.5")).unwrap();
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let all: Vec<String> = keys::<ManagerConfig>()
        .keys()
        .chain(keys::<AgentConfig>().keys())
        .cloned()
        .collect();
    for key in all {
        let tag = format!(".B {}\n", key.replace('-', "\\-"));
        assert!(
            page.contains(&tag),
            "service-mgr.conf(5) does not describe {key}"
        );
        assert!(
            readme.contains(&format!("| {key} ")),
            "README's configuration tables lack {key}"
        );
    }
}
