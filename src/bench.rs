//! `service-mgr bench`: latency, throughput and memory figures (see BENCHMARKS.md).

use crate::exit::Exit;
use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub fn run(_args: &BenchArgs) -> Result<Exit> {
    anyhow::bail!("the benchmark is not built yet")
}
