//! Values the completion scripts offer but clap does not enforce: `-c`'s
//! commands (agents may allow others) and `mgmt`'s commands.

use crate::protocol as p;
use clap::builder::{PossibleValue, StringValueParser, TypedValueParser};
use std::ffi::OsStr;

/// The commands every service(8) knows; agents may allow others.
pub const SERVICE_COMMANDS: [&str; 5] = p::STANDARD_COMMANDS;

/// `service-mgr mgmt`'s commands: the short names, `keys`, then the full names.
pub const MGMT_COMMANDS: [&str; 16] = [
    "agents",
    "jobs",
    "job",
    "history",
    "status",
    "shutdown",
    "keys",
    p::MANAGER_STATUS,
    p::MANAGER_SHUTDOWN,
    p::MANAGER_AGENTS,
    p::MANAGER_JOBS,
    p::MANAGER_JOB,
    p::MANAGER_FORGET,
    p::MANAGER_HISTORY,
    p::AGENT_STATUS,
    p::AGENT_SHUTDOWN,
];

/// A value parser that accepts any string, as before, and names `hints` as
/// its possible values, which the completion scripts offer. Use with
/// `hide_possible_values = true`: the help text says what is accepted.
#[derive(Clone, Copy, Debug)]
pub struct Hints(pub &'static [&'static str]);

impl TypedValueParser for Hints {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.0.iter().copied().map(PossibleValue::new)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_accept_any_word() {
        let cmd = clap::Command::new("x");
        let v = Hints(&SERVICE_COMMANDS)
            .parse_ref(&cmd, None, OsStr::new("force-reload"))
            .unwrap();
        assert_eq!(v, "force-reload");
        let offered: Vec<String> = Hints(&SERVICE_COMMANDS)
            .possible_values()
            .unwrap()
            .map(|p| p.get_name().to_owned())
            .collect();
        assert_eq!(offered, SERVICE_COMMANDS);
    }
}
