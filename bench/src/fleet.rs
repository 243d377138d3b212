//! The fleet figures of issue 12: a cold start of N simulated agents, the
//! manager restarted under them, and all of them dropping at once, with the
//! manager asked `manager.status` throughout (each answer's time a sample:
//! it must never go silent).
//!
//! A simulated agent holds two descriptors (its DEALER's mailbox and its TCP
//! connection) and the hard limit here is 20,000 per process, so fleets are
//! split over simulator processes of at most [`PER_PROCESS`] agents, each
//! with its own node prefix.

use super::{log_tail, manager_key, mgmt_wire, ms, spawn, Bench, Deployment, Figure, Proc, Target};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use service_mgr::protocol;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Simulated agents per simulator process.
const PER_PROCESS: usize = 2500;
/// How long one `manager.status` may take before it counts as silence.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two questions.
const ASK_EVERY: Duration = Duration::from_millis(50);

/// The node prefix of simulator process `k`.
fn prefix(k: usize) -> String {
    format!("{}p{k}-", super::PREFIX)
}

impl Bench<'_> {
    /// Cold start, restart and drop of `n` simulated agents on one manager.
    pub(super) fn fleet(&self, n: usize) -> Vec<Figure> {
        let label = |what: &str| format!("{n} agents: {what}");
        let mut cold = Figure::new(
            format!("fleet_{n}_cold_start"),
            label("manager and fleet started, until all up"),
            "s",
        );
        let mut rss = Figure::new(
            format!("rss_manager_{n}_agents_fleet"),
            label("manager holding them (RSS)"),
            "MiB",
        );
        let mut restart = Figure::new(
            format!("fleet_{n}_restart"),
            label("manager restarted, until all up again"),
            "s",
        );
        let mut restart_ask = Figure::new(
            format!("fleet_{n}_restart_status"),
            label("manager.status answered during the restart"),
            "ms",
        )
        .target(Target::Below(1000.0));
        let mut drop = Figure::new(
            format!("fleet_{n}_drop_lost"),
            label("all killed at once, until all lost"),
            "s",
        );
        let mut drop_ask = Figure::new(
            format!("fleet_{n}_drop_status"),
            label("manager.status answered during the drop"),
            "ms",
        )
        .target(Target::Below(1000.0));
        let mut broadcast = Figure::new(
            format!("fleet_{n}_broadcast"),
            label("broadcast status, request to last result, all verified"),
            "ms",
        );
        if n >= 10_000 {
            broadcast = broadcast.target(Target::Below(1000.0));
            cold = cold.target(Target::Below(30.0));
            restart = restart.target(Target::Below(30.0));
            rss = rss.target(Target::Below(200.0));
        }
        let outcome = (|| -> Result<()> {
            eprintln!("bench: fleet of {n}: cold start ...");
            let (mut d, took) = self.deploy_split(n)?;
            cold.samples.push(took.as_secs_f64());
            // Holding them, settled: after the manager's next return of freed
            // heap (every 15 s), not amid the cold start's backlog (its peak is
            // the figure's `peak_mib`).
            std::thread::sleep(Duration::from_secs(16));
            super::sample_memory(&mut rss, d.manager.pid(), 5)?;

            eprintln!("bench: fleet of {n}: broadcast ...");
            let ctx = zmq::Context::new();
            let front = d.manager.ep("frontend_endpoint")?;
            // One run unmeasured, as for the smaller broadcasts.
            self.broadcast_once(&ctx, &front, n)?;
            for _ in 0..self.plan.reps.min(5) {
                broadcast
                    .samples
                    .push(ms(self.broadcast_once(&ctx, &front, n)?));
            }

            eprintln!("bench: fleet of {n}: manager restart ...");
            let down = Instant::now();
            super::stop_manager(&mut d.manager)?;
            let again = self.manager_again(&d.manager)?;
            d.manager = again;
            let asked = self.ask_until(&d, |up| up >= n, Duration::from_secs(120))?;
            restart.samples.push(down.elapsed().as_secs_f64());
            restart_ask.samples = asked;

            eprintln!("bench: fleet of {n}: all agents killed at once ...");
            for a in &mut d.agents {
                let _ = a.child.kill();
            }
            let killed = Instant::now();
            for a in &mut d.agents {
                let _ = a.child.wait();
            }
            let asked = self.ask_until(&d, |up| up == 0, Duration::from_secs(120))?;
            drop.samples.push(killed.elapsed().as_secs_f64());
            drop_ask.samples = asked;
            Ok(())
        })();
        let mut figures = vec![cold, rss, broadcast, restart, restart_ask, drop, drop_ask];
        let mut said: Option<String> = None;
        for f in &mut figures {
            f.detail.insert("agents".into(), json!(n));
            f.detail
                .insert("simulator_processes".into(), json!(n.div_ceil(PER_PROCESS)));
            if let Err(e) = &outcome {
                if f.samples.is_empty() {
                    // The whole story once; the figures after it point there.
                    match &said {
                        None => {
                            f.failed(e);
                            said = Some(f.label.clone());
                        }
                        Some(first) => f.failed(&anyhow::anyhow!("not measured: see \"{first}\"")),
                    }
                }
            }
        }
        figures
    }

    /// A manager and `n` simulated agents over as many simulator processes
    /// as the descriptor limit needs, every agent up; and the time from
    /// starting the simulators to all up (keys are made before, not timed).
    fn deploy_split(&self, n: usize) -> Result<(Deployment, Duration)> {
        let processes = n.div_ceil(PER_PROCESS);
        let dir = service_mgr::agent::simulate::key_dir(&service_mgr::config::AgentConfig {
            key_file: Some(self.agent_key_file.clone()),
            ..Default::default()
        });
        let sizes: Vec<usize> = (0..processes)
            .map(|k| PER_PROCESS.min(n - k * PER_PROCESS))
            .collect();
        let keys: Vec<PathBuf> = sizes
            .iter()
            .enumerate()
            .map(|(k, &m)| service_mgr::agent::simulate::ensure_keys(&dir, &prefix(k), m))
            .collect::<Result<_>>()
            .context("cannot make the simulated agents' keys")?;
        let manager = self.manager(&format!("fleet-{n} manager"), &keys)?;
        let config = self.agent_config(&manager, &format!("fleet-{n}"))?;
        let mut d = Deployment {
            manager,
            agents: Vec::new(),
            nodes: n,
        };
        let started = Instant::now();
        for (k, &m) in sizes.iter().enumerate() {
            let args = vec![
                "agent".to_owned(),
                "-f".into(),
                config.display().to_string(),
                "--simulate".into(),
                m.to_string(),
                "--node-prefix".into(),
                prefix(k),
            ];
            d.agents.push(spawn(
                &self.exe,
                &self.dir,
                &format!("fleet-{n} simulator {k}"),
                &args,
                Duration::from_secs(120),
            )?);
        }
        self.ask_until(&d, |up| up >= n, Duration::from_secs(300))?;
        Ok((d, started.elapsed()))
    }

    /// The same manager again (its state, keys and endpoints) after it stopped.
    fn manager_again(&self, old: &Proc) -> Result<Proc> {
        let state = old
            .state_dir
            .clone()
            .context("the manager's state_dir is unknown")?;
        let args = super::manager_args(&state, |ep| old.ep(ep))?;
        let mut p = spawn(
            &self.exe,
            &self.dir,
            &format!("{} again", old.name),
            &args,
            Duration::from_secs(60),
        )?;
        p.state_dir = Some(state);
        anyhow::ensure!(
            manager_key(&p)? == manager_key(old)?,
            "the restarted manager has another key"
        );
        Ok(p)
    }

    /// Ask `manager.status` every [`ASK_EVERY`] until `done(agents_up)`; the
    /// time each answer took, in ms. Silence past [`ASK_TIMEOUT`] is an error.
    fn ask_until(
        &self,
        d: &Deployment,
        done: impl Fn(usize) -> bool,
        within: Duration,
    ) -> Result<Vec<f64>> {
        let mgmt = d.manager.ep("mgmt_endpoint")?;
        let wire = mgmt_wire(&d.manager)?;
        let deadline = Instant::now() + within;
        let mut took = Vec::new();
        let mut up = 0;
        while Instant::now() < deadline {
            let t = Instant::now();
            let status: Value = service_mgr::mgmt::call_cmd(&mgmt, &wire, protocol::MANAGER_STATUS, ASK_TIMEOUT, 1)
                .with_context(|| {
                    format!(
                        "the manager did not answer manager.status within {} s ({up} agents were up); its log ends:\n{}",
                        ASK_TIMEOUT.as_secs(),
                        log_tail(&d.manager.log)
                    )
                })?;
            took.push(ms(t.elapsed()));
            up = status["result"]["agents_up"].as_u64().unwrap_or(0) as usize;
            if done(up) {
                return Ok(took);
            }
            std::thread::sleep(ASK_EVERY);
        }
        bail!(
            "{up} agents up after {} s, not what was waited for; the first simulator's log ends:\n{}",
            within.as_secs(),
            d.agents.first().map(|a| log_tail(&a.log)).unwrap_or_default()
        )
    }
}
