//! Man pages and shell completions generated from the clap definitions.

use anyhow::Result;
use std::path::Path;

pub fn generate(what: &str, _dir: &Path) -> Result<()> {
    anyhow::bail!("cannot generate {what} yet")
}
