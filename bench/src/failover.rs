//! Issue 14's failover figure: two managers sharing their key pair and key
//! store, a few real agents connected to both, and a client run as a user
//! would (`service-mgr client -e A,B`, its defaults). The first-listed manager
//! is killed (SIGKILL); the figure is the time from the kill to the exit of
//! the first client run that got every node's answer through the other.

use super::{manager_args, ms, spawn, Bench, Figure, Proc, Target, LOOPBACK, PREFIX, SERVICE};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Real agents on both managers.
const AGENTS: usize = 3;

impl Bench<'_> {
    /// Kill the active manager `reps` times; each time, how long until a
    /// client run with the defaults is answered by the other.
    pub(super) fn failover(&self, reps: usize) -> Figure {
        let mut f = Figure::new(
            "failover_kill_to_answer",
            format!("manager killed, until a client (-e A,B) got all {AGENTS} answers"),
            "ms",
        )
        .target(Target::Below(2000.0));
        f.detail.insert("agents".into(), json!(AGENTS));
        let outcome = (|| -> Result<()> {
            let keys = self.fleet_keys_real(AGENTS)?;
            let a = self.manager("failover manager A", &[keys])?;
            let state_a = a.state_dir.clone().context("no state_dir")?;
            let mut b = self.twin(&a, "failover manager B")?;
            let mut a = Some(a);
            let backends = format!(
                "{},{}",
                a.as_ref().unwrap().ep("backend_endpoint")?,
                b.ep("backend_endpoint")?
            );
            let config = self.agent_config_for(&backends, &b, "failover")?;
            let mut agents = Vec::new();
            for i in 1..=AGENTS {
                agents.push(self.real_agent(&config, i)?);
            }
            let fronts = format!(
                "{},{}",
                a.as_ref().unwrap().ep("frontend_endpoint")?,
                b.ep("frontend_endpoint")?
            );
            let endpoints_a: Vec<(String, String)> = [
                "frontend_endpoint",
                "backend_endpoint",
                "sink_endpoint",
                "mgmt_endpoint",
            ]
            .iter()
            .map(|k| Ok((k.to_string(), a.as_ref().unwrap().ep(k)?)))
            .collect::<Result<_>>()?;
            for rep in 0..reps {
                let mut up = a.take().context("manager A is not running")?;
                self.wait_all_up(&up, AGENTS)?;
                self.wait_all_up(&b, AGENTS)?;
                // Answered through A first: everything is warm.
                self.client_run(&fronts, &b)?;
                let killed = Instant::now();
                up.child.kill().context("cannot kill manager A")?;
                let _ = up.child.wait();
                loop {
                    if self.client_run(&fronts, &b).is_ok() {
                        f.samples.push(ms(killed.elapsed()));
                        break;
                    }
                    if killed.elapsed() > Duration::from_secs(30) {
                        bail!("no client run was answered within 30 s of killing manager A");
                    }
                }
                eprintln!(
                    "bench: failover {}/{reps}: {:.0} ms",
                    rep + 1,
                    f.samples.last().unwrap()
                );
                // A again, on its ports and state.
                let args = manager_args(&state_a, |ep| {
                    endpoints_a
                        .iter()
                        .find(|(k, _)| k == ep)
                        .map(|(_, v)| v.clone())
                        .context("unknown endpoint")
                })?;
                let mut again = spawn(
                    &self.exe,
                    &self.dir,
                    "failover manager A again",
                    &args,
                    Duration::from_secs(20),
                )?;
                again.state_dir = Some(state_a.clone());
                a = Some(again);
            }
            b.check_alive()?;
            Ok(())
        })();
        if let Err(e) = outcome {
            f.failed(&e);
        }
        f
    }

    /// Keys for `n` real agents, and the file listing them.
    fn fleet_keys_real(&self, n: usize) -> Result<PathBuf> {
        let dir = self.dir.join("real-agents");
        service_mgr::agent::simulate::ensure_keys(&dir, PREFIX, n)
            .context("cannot make the agents' keys")
    }

    /// A second manager with `first`'s key pair and key store (symlinks),
    /// its own state and job store, new ports.
    fn twin(&self, first: &Proc, name: &str) -> Result<Proc> {
        let first_state = first.state_dir.clone().context("no state_dir")?;
        let state = self.dir.join(format!("{name}-state").replace(' ', "-"));
        std::fs::create_dir_all(&state)?;
        for shared in ["keys", "manager.key", "manager.key.pub"] {
            std::os::unix::fs::symlink(first_state.join(shared), state.join(shared))
                .with_context(|| format!("cannot link {shared} into the second manager's state"))?;
        }
        let args = manager_args(&state, |_| Ok(LOOPBACK.into()))?;
        let mut p = spawn(&self.exe, &self.dir, name, &args, Duration::from_secs(20))?;
        p.state_dir = Some(state);
        anyhow::ensure!(
            p.ready["manager_key"] == first.ready["manager_key"],
            "the second manager has another key"
        );
        Ok(p)
    }

    /// The agents' config with `managers` as manager_endpoint.
    fn agent_config_for(&self, managers: &str, any: &Proc, name: &str) -> Result<PathBuf> {
        let path = self.agent_config(any, name)?;
        let text = std::fs::read_to_string(&path)?;
        let mut cfg: toml::Table = text
            .parse()
            .context("cannot read back the agents' config")?;
        cfg.insert(
            "manager_endpoint".into(),
            toml::Value::String(managers.into()),
        );
        std::fs::write(&path, toml::to_string(&cfg)?)?;
        Ok(path)
    }

    /// Real agent `i` (its own key) with `config`.
    fn real_agent(&self, config: &Path, i: usize) -> Result<Proc> {
        let node = super::node_name(i);
        let args = super::real_agent_args(config, &self.dir.join("real-agents"), &node);
        spawn(
            &self.exe,
            &self.dir,
            &format!("failover agent {node}"),
            &args,
            Duration::from_secs(20),
        )
    }

    /// Wait until `manager` reports `n` agents up.
    fn wait_all_up(&self, manager: &Proc, n: usize) -> Result<()> {
        let mgmt = manager.ep("mgmt_endpoint")?;
        let wire = super::mgmt_wire(manager)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status: Value = service_mgr::mgmt::call_cmd(
                &mgmt,
                &wire,
                service_mgr::protocol::MANAGER_STATUS,
                Duration::from_secs(2),
                1,
            )
            .unwrap_or_default();
            if status["result"]["agents_up"].as_u64() == Some(n as u64) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} has not {n} agents up after 30 s: {status}",
                    manager.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One client run as a user types it (defaults: -t 1000 -r 3); Ok when
    /// every agent answered ok.
    fn client_run(&self, endpoints: &str, any: &Proc) -> Result<()> {
        let pin = any.ready["manager_key"].as_str().unwrap_or("plaintext");
        let out = Command::new(&self.exe)
            .args(["client", "-e", endpoints, "-k"])
            .arg(&self.client_key_file)
            .args([
                "--manager-key",
                pin,
                "-T",
                "any",
                "-c",
                "status",
                "-s",
                SERVICE,
                "--format",
                "json",
            ])
            .stdin(Stdio::null())
            .output()
            .context("cannot run the client")?;
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() && doc["summary"]["ok"] == json!(AGENTS) {
            Ok(())
        } else {
            bail!(
                "client exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
    }
}
