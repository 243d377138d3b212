//! Man pages and shell completions generated from the product's clap definitions.
//!
//! `cargo xtask docs` (or `make docs`) writes service-mgr(8), service-mgrd(8),
//! service-mgr-agentd(8) and service-mgr-client(1) to `man/`: clap_mangen
//! renders the name, synopsis and options from `service_mgr::cli::Applet`;
//! this crate adds what clap does not know (description, exit status, files,
//! environment, examples). It also writes bash, zsh and fish completions for
//! `service-mgr` and each link name to `completions/`. Both outputs are
//! committed and `tests/docs.rs` fails when they drift from the clap
//! definitions. service-mgr.conf(5) and service-mgr(7) are written by hand in
//! `man/`. Kept out of the product so that the shipped binary carries neither
//! the generators nor a hidden subcommand.

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use clap_complete::{Generator, Shell};
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;
use service_mgr::cli::{Applet, LINK_NAMES, MAIN_NAME};
use service_mgr::hints::MGMT_COMMANDS;
use std::path::Path;

/// Write the man pages (`what` = `man`) or the completions (`completions`) into `dir`.
pub fn generate(what: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = match what {
        "man" => man_pages()?,
        "completions" => completions()?,
        other => bail!("cannot generate {other:?}: say man or completions"),
    };
    for (name, text) in files {
        let path = dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// One applet of the multicall command, by name.
fn applet(name: &str) -> clap::Command {
    Applet::command()
        .find_subcommand(name)
        .unwrap_or_else(|| panic!("no applet {name} in cli::Applet"))
        .clone()
}

/// `(file name, contents)` of every completion script: bash (`NAME.bash`),
/// zsh (`_NAME`) and fish (`NAME.fish`) for service-mgr and each link name.
pub fn completions() -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in std::iter::once(MAIN_NAME).chain(LINK_NAMES) {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = applet(name);
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, name, &mut buf);
            let script = String::from_utf8(buf).context("clap_complete wrote non-UTF-8")?;
            let script = match shell {
                Shell::Bash => bash_case_labels(name, &script),
                _ => script,
            };
            let script = with_targets(shell, name, script)?;
            out.push((shell.file_name(name), script.into_bytes()));
        }
    }
    Ok(out)
}

/// clap_complete (4.6.11) spells the bash case labels of a hyphenated
/// program's subcommands differently from the state its loop computes
/// (`service__subcmd__mgr__subcmd__client` vs `service__mgr__subcmd__client`),
/// so nothing after `service-mgr SUBCOMMAND` completed
/// (clap-rs/clap#6421). Spell the labels as the loop does.
fn bash_case_labels(name: &str, script: &str) -> String {
    let wrong = format!("{}__subcmd__", name.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", name.replace('-', "__"));
    script
        .lines()
        .map(|line| {
            let label = line.trim_start();
            let fixed = match label.strip_prefix(&wrong) {
                Some(rest) if label.ends_with(')') => {
                    format!("{}{right}{rest}", &line[..line.len() - label.len()])
                }
                _ => line.to_owned(),
            };
            fixed + "\n"
        })
        .collect()
}

/// Bash: the targets of -T/-N from the manager named by -e on the line (see
/// `service_mgr::completion`). The program gets `--` first, so that one
/// without the completion hook refuses the line instead of running it.
const BASH_TARGETS: &str = r#"
# -T/-N: the nodes the manager named by -e knows (asked with a 0.3 s limit).
_service_mgr_targets() {
    local what="$1" cur="$2" pre="" line
    read -ra line <<< "${COMP_LINE:0:COMP_POINT}"
    if [[ $what == nodes && $cur == *,* ]]; then
        pre="${cur%,*},"
        cur="${cur##*,}"
    fi
    local IFS=$'\n'
    COMPREPLY=($(compgen -P "$pre" -W "$(SERVICE_MGR_COMPLETE="$what" \
        "${line[0]}" -- "${line[@]}" 2>/dev/null)" -- "$cur"))
}
"#;

/// Zsh: as [`BASH_TARGETS`].
const ZSH_TARGETS: &str = r#"# -T/-N: the nodes the manager named by -e knows (asked with a 0.3 s limit).
(( $+functions[_service_mgr_targets] )) ||
_service_mgr_targets() {
    # _arguments puts compadd's options before ours: topics or nodes comes last.
    local what=$argv[-1]
    local -a names
    argv[-1]=()
    names=(${(f)"$(SERVICE_MGR_COMPLETE=$what ${(Q)words[1]} -- ${(Q)words[1,CURRENT-1]} 2>/dev/null)"})
    [[ $what == nodes ]] && compset -P '*,'
    compadd "$@" -a names
}

"#;

/// Fish: as [`BASH_TARGETS`].
const FISH_TARGETS: &str = r#"
# -T/-N: the nodes the manager named by -e knows (asked with a 0.3 s limit).
function __fish_service_mgr_targets
    set -l line (commandline -opc)
    set -l pre ''
    if test "$argv[1]" = nodes
        set pre (string replace -r '[^,]*$' '' -- (commandline -ct))
    end
    for n in (env SERVICE_MGR_COMPLETE=$argv[1] $line[1] -- $line 2>/dev/null)
        echo $pre$n
    end
end
"#;

/// What clap_complete cannot say: -T and -N complete from the manager, and
/// fish offers `mgmt`'s commands (its generator skips positionals). Fails if
/// the generated script no longer has the shape this edits.
fn with_targets(shell: Shell, name: &str, script: String) -> Result<String> {
    let has_client = name == MAIN_NAME || name == "service-mgr-client";
    let mut edits = 0;
    let mut out = String::with_capacity(script.len() + 1024);
    let mut lines = script.lines().peekable();
    while let Some(line) = lines.next() {
        let what = |topic: &str, nodes: &str| match line.trim() {
            t if t.starts_with(topic) => Some("topics"),
            t if t.starts_with(nodes) => Some("nodes"),
            _ => None,
        };
        match shell {
            Shell::Bash => {
                let what = match line.trim() {
                    "-T)" | "--topic)" => Some("topics"),
                    "-N)" | "--nodes)" => Some("nodes"),
                    _ => None,
                };
                out.push_str(line);
                out.push('\n');
                let generic = r#"COMPREPLY=($(compgen -f "${cur}"))"#;
                if let (Some(what), Some(next)) = (what, lines.peek()) {
                    if next.trim() == generic {
                        let indent = &next[..next.len() - next.trim_start().len()];
                        out.push_str(&format!(
                            "{indent}_service_mgr_targets {what} \"${{cur}}\"\n"
                        ));
                        lines.next();
                        edits += 1;
                    }
                }
                continue;
            }
            Shell::Zsh => {
                if line.starts_with("if [ \"$funcstack[1]\" = ") && has_client {
                    out.push_str(ZSH_TARGETS);
                }
                if let Some(what) = what("'-T+[", "'*-N+[")
                    .or_else(|| what("'--topic=[", "'*--nodes=["))
                    .filter(|_| line.ends_with(":_default' \\"))
                {
                    let keep = line.len() - ":_default' \\".len();
                    out.push_str(&format!(
                        "{}:_service_mgr_targets {what}' \\\n",
                        &line[..keep]
                    ));
                    edits += 1;
                    continue;
                }
            }
            Shell::Fish => {
                let what = if line.contains(" -s T -l topic ") {
                    Some("topics")
                } else if line.contains(" -s N -l nodes ") {
                    Some("nodes")
                } else {
                    None
                };
                if let Some(what) = what.filter(|_| line.ends_with(" -r")) {
                    out.push_str(&format!(
                        "{line} -f -a \"(__fish_service_mgr_targets {what})\"\n"
                    ));
                    edits += 1;
                    continue;
                }
            }
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    // Bash and zsh have a line for each spelling, fish one for both.
    let expected = if shell == Shell::Fish { 2 } else { 4 };
    match (has_client, edits) {
        (false, 0) => return Ok(out),
        (true, n) if n == expected => {}
        _ => bail!(
            "{name}: {edits} -T/-N options found in the {shell} script, expected {} or none",
            expected
        ),
    }
    match shell {
        Shell::Bash => out.push_str(BASH_TARGETS),
        Shell::Fish => {
            if name == MAIN_NAME {
                out.push_str(&format!(
                    "complete -c {name} -n \"__fish_service_mgr_using_subcommand mgmt\" -f -a \"{}\"\n",
                    MGMT_COMMANDS.join(" ")
                ));
            }
            out.push_str(FISH_TARGETS);
        }
        _ => {}
    }
    Ok(out)
}

/// A section heading.
fn sh(r: &mut Roff, title: &str) {
    r.control("SH", [title]);
}

/// A paragraph of plain text (may span lines).
fn para(r: &mut Roff, text: &str) {
    r.control("PP", []);
    r.text([roman(text)]);
}

/// A tagged paragraph: `tag` in bold, then its text.
fn item(r: &mut Roff, tag: &str, text: &str) {
    r.control("TP", []);
    r.text([bold(tag)]);
    r.text([roman(text)]);
}

/// An example: what it does, then the command line, indented and unfilled.
fn example(r: &mut Roff, what: &str, cmd: &str) {
    r.control("PP", []);
    r.text([roman(what)]);
    r.control("RS", ["2"]);
    r.control("nf", []);
    for line in cmd.lines() {
        r.text([bold(line)]);
    }
    r.control("fi", []);
    r.control("RE", []);
}

/// References as `name(section)`, comma-separated.
fn see_also(r: &mut Roff, pages: &[(&str, &str)]) {
    sh(r, "SEE ALSO");
    let mut line: Vec<Inline> = Vec::new();
    for (i, (name, sec)) in pages.iter().enumerate() {
        line.push(bold(*name));
        line.push(roman(if i + 1 == pages.len() {
            format!("({sec})")
        } else {
            format!("({sec}),")
        }));
        if i + 1 < pages.len() {
            line.push(roman(" "));
        }
    }
    r.text(line);
}

/// Roff source without the apostrophe preamble that every render starts with
/// (the page has it once), and without the first line when it is a `.SH`
/// heading we replace.
fn body(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>, drop_heading: bool) -> String {
    let mut buf = Vec::new();
    render(&mut buf).expect("rendering to memory cannot fail");
    let text = String::from_utf8(buf).expect("roff output is UTF-8");
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(".ie \\n(.g .ds Aq") && !l.starts_with(".el .ds Aq"))
        .collect();
    if drop_heading && lines.first().is_some_and(|l| l.starts_with(".SH")) {
        lines.remove(0);
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn roff_text(r: &Roff) -> String {
    body(|w| r.to_writer(w), false)
}

const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// Exit status of the daemons and of `stop`/`status`.
const EXIT_DAEMON: [(&str, &str); 3] = [
    ("0", "The daemon ran and stopped cleanly (SIGTERM, SIGINT or a shutdown command), or, for stop and status, the running daemon answered with success."),
    ("1", "An error: an unreadable or invalid config file, an endpoint that cannot be bound, a daemon already running with the same pid file, or no answer from the daemon to stop or status."),
    ("2", "The command line was wrong (unknown option, bad value), or the program was called by a name it does not answer to."),
];

/// Exit status of the client (see `exit::Exit`).
const EXIT_CLIENT: [(&str, &str); 5] = [
    ("0", "Every expected node answered, and every answer is ok."),
    ("1", "An error: the manager did not answer (after -r tries of -t milliseconds each), refused the request, or a value such as -w was unusable."),
    ("2", "The command line was wrong."),
    ("3", "Every expected node answered, but some did not succeed: the command failed, timed out or was refused by the agent, or a --fail-fast rollout skipped the node."),
    ("4", "Some expected node did not answer within the wait (-w), or no node matched the target, or nobody answered at all."),
];

/// Exit status of every command, for service-mgr(8).
const EXIT_ALL: [(&str, &str); 5] = [
    ("0", "Success: a daemon ran and stopped cleanly; stop, status and mgmt got a successful answer; for client, every expected node answered ok."),
    ("1", "An error: an invalid config file, an endpoint that cannot be bound, a daemon already running, no answer from the manager or agent, or an error answer to a management command."),
    ("2", "The command line was wrong, or the program was called by a name it does not answer to."),
    ("3", "client only: every expected node answered, but some did not succeed (failed, timeout, refused, or skipped by --fail-fast)."),
    ("4", "client only: some expected node did not answer within the wait (-w), or no node matched the target, or nobody answered at all."),
];

const FILES: [(&str, &str); 6] = [
    ("/etc/service-mgr/service-mgrd.conf", "The manager's configuration, TOML or the 0.1 INI form; see service-mgr.conf(5). A missing default file means built-in defaults."),
    ("/etc/service-mgr/service-mgr-agentd.conf", "The agent's configuration; see service-mgr.conf(5)."),
    ("/var/run/service-mgr/service-mgrd.pid", "The manager's pid file when it runs detached (-d), locked while it runs."),
    ("/var/run/service-mgr/service-mgr-agentd.pid", "The agent's pid file when it runs detached (-d)."),
    ("/var/log/service-mgr/service-mgrd.log", "The manager's log when it runs detached (-d); SIGHUP reopens it."),
    ("/var/log/service-mgr/service-mgr-agentd.log", "The agent's log when it runs detached (-d); SIGHUP reopens it."),
];

fn exit_status(r: &mut Roff, codes: &[(&str, &str)]) {
    sh(r, "EXIT STATUS");
    for (code, text) in codes {
        item(r, code, text);
    }
}

fn files(r: &mut Roff, which: &[&str]) {
    sh(r, "FILES");
    for (path, text) in FILES
        .iter()
        .filter(|(p, _)| which.iter().any(|w| p.contains(w)))
    {
        item(r, path, text);
    }
}

fn signals(r: &mut Roff) {
    sh(r, "SIGNALS");
    item(r, "SIGTERM, SIGINT", "Stop gracefully: the agent first delivers the results of commands still running (for 10 seconds at most). A second signal stops at once.");
    item(r, "SIGHUP", "Reopen the log file (after logrotate(8) or newsyslog(8) moved it). The configuration is not reread; restart the daemon after changing it.");
}

fn environment_output(r: &mut Roff) {
    sh(r, "ENVIRONMENT");
    item(r, "NO_COLOR", "When set to anything but the empty string, tables are printed without colour (https://no-color.org). Colour is only ever used on a terminal.");
    item(
        r,
        "COLUMNS",
        "The width of tables when standard output is not a terminal (default 100).",
    );
    item(r, "SERVICE_MGR_COMPLETE", "Set by the shell completions, with -- as the first argument: the program then only prints the nodes the manager at -e knows, for -T and -N (asked with a dry run that runs nothing, giving up after 0.3 seconds), and exits.");
}

const CLIENT_OUTPUT: &str = "On a terminal the client shows a live count of answers on standard error while it waits, then prints a table: node, system, status, return code, time taken and the first line of the output, and a summary line. When standard output is not a terminal it prints JSON instead: as service-mgr-client the 0.1 array of results (so that 0.1 scripts keep working), as service-mgr client the JSON document with the job id, the request, the expected nodes, a summary and every node's result. --format picks one explicitly; jsonl prints each result on its own line as it arrives, then the silent nodes, then a summary line.";

const CLIENT_STATUS: &str = "Every node that the request reached gets a status: ok (exit code 0), failed, timeout (killed after the agent's command_timeout), interrupted (still running when the stopping agent's stop_timeout ran out; killed), refused (the agent ran nothing: a name that is not plain or a command not in allowed_commands), no_response (expected but silent until -w ran out) or skipped (not reached by a --fail-fast rollout). The client returns as soon as every expected node answered; -w is only the upper bound.";

/// The manager's page, `service-mgrd(8)`.
fn manager_extra(r: &mut Roff) {
    signals(r);
    exit_status(r, &EXIT_DAEMON);
    files(r, &["service-mgrd."]);
    sh(r, "EXAMPLES");
    example(
        r,
        "Run in the background with the default config, pid and log files:",
        "service-mgrd -d start",
    );
    example(
        r,
        "Run in the foreground with debug output and a shorter job lifetime:",
        "service-mgrd -D -f /etc/service-mgr/service-mgrd.conf \\\n    -O job_ttl=60 start",
    );
    example(
        r,
        "Ask the running manager for its status, then stop it:",
        "service-mgrd -e tcp://localhost:5800 status\nservice-mgrd -e tcp://localhost:5800 stop",
    );
    see_also(
        r,
        &[
            ("service-mgr-agentd", "8"),
            ("service-mgr-client", "1"),
            ("service-mgr", "8"),
            ("service-mgr.conf", "5"),
            ("service-mgr", "7"),
        ],
    );
}

fn agent_extra(r: &mut Roff) {
    signals(r);
    exit_status(r, &EXIT_DAEMON);
    files(r, &["service-mgr-agentd."]);
    sh(r, "EXAMPLES");
    example(
        r,
        "Run in the background with the default config, pid and log files:",
        "service-mgr-agentd -d start",
    );
    example(r, "Connect to the manager on host mgr as node web1, member of the groups web and frontend:", "service-mgr-agentd -n web1 --topics web,frontend \\\n    -O manager_endpoint=tcp://mgr:5600 \\\n    -O sink_endpoint=tcp://mgr:5700 start");
    example(r, "Ask the running agent for its status, then stop it:", "service-mgr-agentd -e tcp://localhost:6000 status\nservice-mgr-agentd -e tcp://localhost:6000 stop");
    see_also(
        r,
        &[
            ("service-mgrd", "8"),
            ("service-mgr-client", "1"),
            ("service-mgr", "8"),
            ("service-mgr.conf", "5"),
            ("service", "8"),
            ("systemctl", "1"),
        ],
    );
}

/// The client's examples, under an EXAMPLES heading the caller wrote.
fn client_examples(r: &mut Roff, prog: &str) {
    example(
        r,
        "The status of sshd on every FreeBSD node:",
        &format!("{prog} -e tcp://localhost:5500 -T FreeBSD -c status -s sshd"),
    );
    example(
        r,
        "Which nodes are there? Ask every node about a service that does not exist:",
        &format!("{prog} -e tcp://localhost:5500 -T any -c status -s dummy"),
    );
    example(
        r,
        "The status of cron on every Linux node, waiting at most 5 seconds:",
        &format!("{prog} -w 5 -e tcp://mgr:5500 -T Linux -c status -s cron"),
    );
    example(
        r,
        "Restart nginx on exactly two nodes:",
        &format!("{prog} -e tcp://mgr:5500 -N web1,web2 -c restart -s nginx"),
    );
    example(r, "A rolling restart of the web nodes, a quarter at a time, 10 seconds apart, stopping at the first failure:", &format!("{prog} -e tcp://mgr:5500 -G 'web*' -c restart -s nginx \\\n    --batch 25% --batch-wait 10 --fail-fast"));
    example(
        r,
        "One JSON line per node as the answers arrive, for a script:",
        &format!("{prog} -e tcp://mgr:5500 -T any -c status -s ntp \\\n    --format jsonl"),
    );
    example(
        r,
        "Two managers: the first that answers takes the request; if it goes away mid-job, the other takes the job over:",
        &format!("{prog} -e tcp://m1:5500,tcp://m2:5500 \\\n    -T web -c restart -s nginx"),
    );
    example(
        r,
        "Show an earlier job again:",
        &format!("{prog} -e tcp://mgr:5500 \\\n    --job 75375cec60854df1b86888b5342bd0a9"),
    );
}

fn client_extra(r: &mut Roff) {
    sh(r, "OUTPUT");
    para(r, CLIENT_OUTPUT);
    para(r, CLIENT_STATUS);
    exit_status(r, &EXIT_CLIENT);
    environment_output(r);
    sh(r, "FILES");
    item(r, "/etc/service-mgr/client.conf", "The host's client settings (TOML): endpoint, key, manager_key, format, wait, timeout, retries. Relative paths are relative to the file. The command line and $SERVICE_MGR_KEY / $SERVICE_MGR_MANAGER_KEY win over it.");
    item(r, "~/.config/service-mgr/client.conf", "The user's client settings; they win over the host's key by key. --conf FILE or $SERVICE_MGR_CLIENT_CONF reads that file instead (none: no file). An example with every key is contrib/client.conf.");
    item(r, "~/.config/service-mgr/client.key", "The client key that signs requests, when neither -k, key nor $SERVICE_MGR_KEY names another (/etc/service-mgr/client.key for root).");
    para(r, "The manager it talks to is configured in /etc/service-mgr/service-mgrd.conf; see service-mgr.conf(5).");
    sh(r, "EXAMPLES");
    client_examples(r, "service-mgr-client");
    see_also(
        r,
        &[
            ("service-mgrd", "8"),
            ("service-mgr-agentd", "8"),
            ("service-mgr", "8"),
            ("service-mgr", "7"),
        ],
    );
}

fn main_extra(r: &mut Roff) {
    sh(r, "OUTPUT");
    para(r, CLIENT_OUTPUT);
    para(r, "mgmt follows the same rule for its short command names (agents, jobs, job ID, status): a table on a terminal, JSON otherwise. Full command names such as manager.status print the JSON reply, as 0.1 did, unless --format table is given.");
    para(r, CLIENT_STATUS);
    signals(r);
    exit_status(r, &EXIT_ALL);
    environment_output(r);
    files(r, &["/"]);
    sh(r, "EXAMPLES");
    example(
        r,
        "Try everything on one machine, without config files or root:",
        "service-mgr demo",
    );
    example(
        r,
        "Create the link names next to the binary:",
        "service-mgr install-links /usr/local/bin",
    );
    example(r, "The agents the manager knows, the recent jobs, and one of them:", "service-mgr mgmt -e tcp://mgr:5800 agents\nservice-mgr mgmt -e tcp://mgr:5800 jobs\nservice-mgr mgmt -e tcp://mgr:5800 \\\n    job 75375cec60854df1b86888b5342bd0a9");
    example(
        r,
        "The manager's status as JSON, the way 0.1 printed it:",
        "service-mgr mgmt -e tcp://mgr:5800 manager.status",
    );
    client_examples(r, "service-mgr client");
    see_also(
        r,
        &[
            ("service-mgrd", "8"),
            ("service-mgr-agentd", "8"),
            ("service-mgr-client", "1"),
            ("service-mgr.conf", "5"),
            ("service-mgr", "7"),
            ("service", "8"),
        ],
    );
}

/// What each generated page says beyond the clap definitions.
struct Page {
    applet: &'static str,
    section: &'static str,
    description: &'static [&'static str],
    extra: fn(&mut Roff),
}

const PAGES: [Page; 4] = [
    Page {
        applet: MAIN_NAME,
        section: "8",
        description: &[
            "service-mgr controls the services of a UNIX/Linux cluster from one place: it asks every FreeBSD node, every web node or one named host to start, stop, restart or reload a service or to report its status, and collects every node's answer. It is one executable that plays every part: the manager daemon, the agent on each node, the client, and management commands. It speaks the protocol of service-mgr 0.1 and can be mixed with 0.1 daemons and clients.",
            "Called through a link named service-mgrd, service-mgr-agentd or service-mgr-client it is that program, with the command line of service-mgr 0.1; see their pages. Called as service-mgr it takes the role as a command, below. Called by any other name it prints one line and exits with status 2.",
            "A request goes to a topic: any, an operating system name (Linux, FreeBSD), a node name, or a group from an agent's topics setting. Topics match exactly (0.1 matched by prefix). -N and -G narrow the target to named nodes or to nodes whose name matches a glob.",
        ],
        extra: main_extra,
    },
    Page {
        applet: "service-mgrd",
        section: "8",
        description: &[
            "service-mgrd is the manager of service-mgr. Clients send service requests to its frontend; it publishes each request to the agents subscribed to the request's topic on its backend, collects their results on its sink and publishes them to the client on its result publisher. It keeps a registry of the agents that announced themselves, so it can tell a client which nodes a request reached and answer for the nodes that went silent.",
            "With the action start (the default) it runs the daemon, in the foreground unless -d is given. With stop or status it sends manager.shutdown or manager.status to the management endpoint of a running manager (-e, else the config's mgmt_endpoint on localhost) and prints the JSON reply.",
            "Settings come from built-in defaults, then the config file, then -O options; see service-mgr.conf(5). service-mgrd is a link to service-mgr(8); service-mgr daemon takes the same options.",
        ],
        extra: manager_extra,
    },
    Page {
        applet: "service-mgr-agentd",
        section: "8",
        description: &[
            "service-mgr-agentd is the agent of service-mgr, one on every node. It subscribes on the manager's backend to the topics any, its operating system name, its node name and its configured topics, runs each request it receives as service NAME CMD (or systemctl, rc-service, or a configured program) without a shell, and sends the result to the manager's sink. It announces itself to the manager and sends heartbeats, so the manager knows which nodes a request reaches.",
            "The agent refuses service names that are not plain (../x, -h, a;b, empty, over 255 bytes) and commands outside allowed_commands, answering with a refused result; nothing runs then. A command that outlives command_timeout is killed with its process group.",
            "With the action start (the default) it runs the daemon; with stop or status it sends agent.shutdown or agent.status to a running agent's management endpoint and prints the JSON reply. service-mgr-agentd is a link to service-mgr(8); service-mgr agent takes the same options.",
        ],
        extra: agent_extra,
    },
    Page {
        applet: "service-mgr-client",
        section: "1",
        description: &[
            "service-mgr-client sends one service request (CMD for SERVICE) to the manager at -e, for the nodes of a topic (-T), a list of nodes (-N) or the nodes whose name matches a glob (-G), and prints every node's answer. The manager says which nodes the request reached; the client waits until all of them answered, at most -w seconds, and reports the silent ones as no_response.",
            "With --batch the request goes to a few nodes at a time (a rolling restart); with --job the client shows an earlier job again, its results so far and any still to come. service-mgr-client is a link to service-mgr(8); service-mgr client takes the same options (and prints JSON rather than 0.1's array when piped).",
        ],
        extra: client_extra,
    },
];

/// `(file name, contents)` of every generated man page.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    PAGES
        .iter()
        .map(|p| {
            Ok((
                format!("{}.{}", p.applet, p.section),
                render(p).into_bytes(),
            ))
        })
        .collect()
}

fn manual(section: &str) -> &'static str {
    match section {
        "1" => "User Commands",
        _ => "System Manager's Manual",
    }
}

fn render(page: &Page) -> String {
    let cmd = applet(page.applet);
    let man = Man::new(cmd.clone())
        .title(page.applet.to_uppercase())
        .section(page.section)
        .source(format!(
            "service-mgr {}",
            cmd.get_version().unwrap_or_default()
        ))
        .manual(manual(page.section));
    let mut out = String::from(PREAMBLE);
    out += &body(|w| man.render_title(w), false);
    // Command names and options read badly hyphenated.
    out += ".nh\n";
    out += &body(|w| man.render_name_section(w), false);
    if page.applet == MAIN_NAME {
        out += &main_synopsis(&cmd);
    } else {
        out += &body(|w| man.render_synopsis_section(w), false);
    }
    let mut r = Roff::new();
    sh(&mut r, "DESCRIPTION");
    for (i, text) in page.description.iter().enumerate() {
        if i > 0 {
            r.control("PP", []);
        }
        r.text([roman(*text)]);
    }
    out += &roff_text(&r);
    out += &body(|w| man.render_options_section(w), false);
    if page.applet == MAIN_NAME {
        out += &commands(&cmd);
    }
    let mut r = Roff::new();
    (page.extra)(&mut r);
    out += &roff_text(&r);
    out
}

/// The subcommands a page documents: visible ones, without clap's `help`.
fn visible_subcommands(cmd: &clap::Command) -> Vec<clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .cloned()
        .collect()
}

/// service-mgr(8)'s synopsis: one line per command.
fn main_synopsis(cmd: &clap::Command) -> String {
    let mut r = Roff::new();
    sh(&mut r, "SYNOPSIS");
    for sub in visible_subcommands(cmd) {
        let name = format!("{MAIN_NAME} {}", sub.get_name());
        let usage = sub.bin_name(&name).render_usage().to_string();
        let usage = usage.trim_start_matches("Usage:").trim();
        let rest = usage.strip_prefix(name.as_str()).unwrap_or(usage);
        r.text([bold(name), roman(rest)]);
        r.control("br", []);
    }
    r.text([
        bold(MAIN_NAME),
        roman(" "),
        bold("--install-links"),
        roman(" "),
        italic("DIR"),
        roman(" | ["),
        bold("-v"),
        roman("|"),
        bold("--version"),
        roman("] ["),
        bold("-h"),
        roman("|"),
        bold("--help"),
        roman("]"),
    ]);
    roff_text(&r)
}

/// service-mgr(8)'s COMMANDS section: each command's summary, synopsis and options.
fn commands(cmd: &clap::Command) -> String {
    let mut out = String::from(".SH COMMANDS\n");
    for sub in visible_subcommands(cmd) {
        let name = format!("{MAIN_NAME} {}", sub.get_name());
        let mut r = Roff::new();
        r.control("SS", [name.replace('-', "\\-").as_str()]);
        if let Some(about) = sub.get_about() {
            r.text([roman(about.to_string())]);
        }
        r.control("PP", []);
        out += &roff_text(&r);
        let man = Man::new(sub.bin_name(&name));
        out += &body(|w| man.render_synopsis_section(w), true);
        out += &body(|w| man.render_options_section(w), true);
    }
    out
}
