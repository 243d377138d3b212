//! Command-line pieces that every program's arguments share (clap derive),
//! kept apart so that each role can own its arguments without importing `cli`.

use clap::{ArgAction, Args};

/// `-v`/`-V`/`--version` on every name (0.1 used `-v`).
#[derive(Debug, Args)]
pub struct VersionFlag {
    /// Print version and exit.
    #[arg(short = 'v', long = "version", short_alias = 'V', action = ArgAction::Version)]
    version: Option<bool>,
}
