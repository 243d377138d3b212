//! What the registry knows of its nodes, kept across a manager restart
//! (`agents.json` in state_dir): each node's name, key, topics, when it was
//! last seen and whether it was up, lost or stopped. A restarted manager
//! expects the nodes that were up as "not back yet" instead of answering
//! "0 expected" until they reconnect.
//!
//! Written off the loop: the loop hands a snapshot to a writer thread when
//! the registry changed (or, for the last-seen times, once a minute), which
//! writes a temporary file and renames it over the old one. Bounded (at most
//! [`AGENTS_MAX`] nodes, [`FILE_MAX`] bytes read); a file that cannot be read
//! is set aside (`agents.json.damaged-<ms>`) and logged, never a panic.

use super::registry::{AgentEntry, Down, Registry, NOT_BACK};
use crate::clock::now_ms;
use crate::protocol::mgmt::{AgentInfo, AgentState};
use serde::{Deserialize, Serialize};
use slog::{error, info, warn, Logger};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Most nodes kept (the most recently seen first).
pub const AGENTS_MAX: usize = 100_000;
/// Largest journal read; a bigger file is set aside as damaged.
pub const FILE_MAX: u64 = 256 << 20;
/// How often the last-seen times are saved when nothing else changed.
const REFRESH: Duration = Duration::from_secs(60);
/// Least time between two snapshots (a fleet coming up changes every round).
const SPACING: Duration = Duration::from_secs(1);
const VERSION: u32 = 1;

/// The file: `{"v": 1, "saved_ms": ..., "agents": [...]}`.
#[derive(Serialize, Deserialize)]
struct JournalFile {
    v: u32,
    saved_ms: u64,
    agents: Vec<Saved>,
}

/// One node as saved: what `manager.agents` lists, its heartbeat interval
/// and, when down, since when and why.
#[derive(Serialize, Deserialize)]
struct Saved {
    #[serde(flatten)]
    info: AgentInfo,
    interval_ms: u64,
    #[serde(default)]
    down_since_ms: Option<u64>,
    #[serde(default)]
    down_why: Option<String>,
}

/// Read the journal at `path`: the nodes it knows, each down (those that
/// were up are [`NOT_BACK`] since `restart_ms`). Missing: none. Unreadable:
/// set aside and logged, none.
pub fn load(path: &Path, restart_ms: u64, log: &Logger) -> Vec<AgentEntry> {
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => Err(format!("cannot read it: {e}")),
        Ok(m) if m.len() > FILE_MAX => Err(format!(
            "it is {} bytes, more than the {FILE_MAX} it may be",
            m.len()
        )),
        Ok(_) => std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}")),
    };
    let file = text.and_then(|t| {
        serde_json::from_str::<JournalFile>(&t).map_err(|e| format!("it is not a journal: {e}"))
    });
    let file = match file {
        Ok(f) if f.v == VERSION => f,
        Ok(f) => {
            set_aside(path, &format!("unknown version {}", f.v), log);
            return Vec::new();
        }
        Err(why) => {
            set_aside(path, &why, log);
            return Vec::new();
        }
    };
    let mut entries: Vec<AgentEntry> = file
        .agents
        .into_iter()
        .filter(|s| crate::protocol::valid_topic(&s.info.node))
        .map(|s| {
            let Saved {
                mut info,
                interval_ms,
                down_since_ms,
                down_why,
            } = s;
            let down = match (info.state, down_since_ms, down_why) {
                (AgentState::Stopped | AgentState::Lost, Some(since_ms), Some(why)) => {
                    Down { since_ms, why }
                }
                (AgentState::Stopped, _, _) => Down {
                    since_ms: info.last_seen_ms,
                    why: "it said goodbye".into(),
                },
                // Up (or connecting) when the manager stopped.
                _ => {
                    info.state = AgentState::Lost;
                    Down {
                        since_ms: restart_ms,
                        why: NOT_BACK.into(),
                    }
                }
            };
            info.skew_s = None;
            AgentEntry::restored(info, interval_ms, down)
        })
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.last_seen_ms));
    entries.truncate(AGENTS_MAX);
    info!(log, "known agents read from the journal; those that were up are awaited";
        "agents" => entries.len(), "path" => %path.display());
    entries
}

/// Move an unreadable journal out of the way, loudly.
fn set_aside(path: &Path, why: &str, log: &Logger) {
    let aside = PathBuf::from(format!("{}.damaged-{}", path.display(), now_ms()));
    match std::fs::rename(path, &aside) {
        Ok(()) => {
            error!(log, "the agents journal is damaged: set aside; starting without known agents";
            "why" => why, "moved_to" => %aside.display())
        }
        Err(e) => {
            error!(log, "the agents journal is damaged and cannot be set aside; starting without known agents";
            "why" => why, "path" => %path.display(), "error" => %e)
        }
    }
}

/// The writer: snapshots go to its thread, which writes the latest.
pub struct Journal {
    tx: Option<mpsc::Sender<Vec<Saved>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    last: Instant,
    log: Logger,
}

impl Journal {
    /// Start the writer for `path`.
    pub fn start(path: PathBuf, log: &Logger) -> Journal {
        let (tx, rx) = mpsc::channel::<Vec<Saved>>();
        let wlog = log.clone();
        let thread = std::thread::Builder::new()
            .name("agents-journal".into())
            .spawn(move || {
                let mut failing = false;
                while let Ok(mut agents) = rx.recv() {
                    // Only the latest snapshot matters.
                    while let Ok(newer) = rx.try_recv() {
                        agents = newer;
                    }
                    match write(&path, agents) {
                        Ok(()) if failing => {
                            info!(wlog, "the agents journal is written again"; "path" => %path.display());
                            failing = false;
                        }
                        Ok(()) => {}
                        Err(e) if !failing => {
                            warn!(wlog, "cannot write the agents journal: a restart will not know the agents until they reconnect";
                                "path" => %path.display(), "error" => %e);
                            failing = true;
                        }
                        Err(_) => {}
                    }
                }
            });
        let (tx, thread) = match thread {
            Ok(t) => (Some(tx), Some(t)),
            Err(e) => {
                warn!(log, "cannot start the agents journal's writer; agents are not kept across restarts"; "error" => %e);
                (None, None)
            }
        };
        Journal {
            tx,
            thread,
            last: Instant::now(),
            log: log.clone(),
        }
    }

    /// Hand a snapshot to the writer when the registry changed, or to
    /// refresh the last-seen times; at most one per SPACING.
    pub fn maybe_save(&mut self, registry: &mut Registry) {
        if self.last.elapsed() < SPACING {
            return;
        }
        if !registry.take_changed() && self.last.elapsed() < REFRESH {
            return;
        }
        self.save(registry);
    }

    fn save(&mut self, registry: &Registry) {
        self.last = Instant::now();
        if let Some(tx) = &self.tx {
            let _ = tx.send(snapshot(registry));
        }
    }

    /// Write the last snapshot and wait for the writer (on stop).
    pub fn finish(mut self, registry: &Registry) {
        self.save(registry);
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!(self.log, "the agents journal's writer failed");
            }
        }
    }
}

fn snapshot(registry: &Registry) -> Vec<Saved> {
    let mut agents: Vec<Saved> = registry
        .entries()
        .map(|e| Saved {
            info: e.info.clone(),
            interval_ms: e.interval().as_millis() as u64,
            down_since_ms: e.down.as_ref().map(|d| d.since_ms),
            down_why: e.down.as_ref().map(|d| d.why.clone()),
        })
        .collect();
    if agents.len() > AGENTS_MAX {
        agents.sort_by_key(|s| std::cmp::Reverse(s.info.last_seen_ms));
        agents.truncate(AGENTS_MAX);
    }
    agents
}

/// Write `agents` to a temporary file beside `path`, then rename it over.
fn write(path: &Path, agents: Vec<Saved>) -> std::io::Result<()> {
    use std::io::Write;
    let file = JournalFile {
        v: VERSION,
        saved_ms: now_ms(),
        agents,
    };
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer(std::io::BufWriter::new(&mut f), &file)?;
    f.flush()?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::registry::hello;

    #[test]
    fn known_nodes_survive_a_restart_and_damage_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.json");
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let mut r = Registry::default();
        r.connected("i1", None);
        r.announce(&hello("web1", "i1", &["any", "web"]), Some("key-1".into()));
        r.announce(&hello("web2", "i2", &["any", "web"]), None);
        r.connected("i2", None);
        r.disconnected("i2");
        Journal::start(path.clone(), &log).finish(&r);
        let restored = load(&path, 42, &log);
        let mut restored = restored;
        restored.sort_by(|a, b| a.node.cmp(&b.node));
        let got: Vec<(&str, AgentState, &str)> = restored
            .iter()
            .map(|e| {
                (
                    e.node.as_str(),
                    e.state,
                    e.down.as_ref().unwrap().why.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("web1", AgentState::Lost, NOT_BACK),
                ("web2", AgentState::Lost, "the agent's connection dropped")
            ]
        );
        assert_eq!(restored[0].key.as_deref(), Some("key-1"));
        assert_eq!(restored[0].down.as_ref().unwrap().since_ms, 42);
        let mut again = Registry::default();
        again.restore(restored);
        assert!(again.not_back("web1") && !again.not_back("web2"));
        assert_eq!(again.down_matching("web", None), ["web1", "web2"]);
        // Damaged: set aside, nothing known, no panic.
        std::fs::write(&path, b"{\"v\": 1, \"agents\": [tru").unwrap();
        assert!(load(&path, 0, &log).is_empty());
        assert!(!path.exists());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("agents.json.damaged-")
            });
        assert!(aside);
    }
}
