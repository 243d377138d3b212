//! `service-mgr agent --simulate N`: many agents in one process, for load tests.

use crate::config::AgentConfig;
use crate::runtime::{Control, OnReady};
use anyhow::Result;
use slog::Logger;

pub fn run(
    _config: &AgentConfig,
    _n: usize,
    _prefix: &str,
    _control: &Control,
    _log: &Logger,
    _on_ready: OnReady,
) -> Result<()> {
    anyhow::bail!("the simulated fleet is not built yet")
}
