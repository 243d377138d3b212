//! Facts about this host that agents report and subscribe by (0.1 used Python's `platform`).

use crate::protocol::mgmt::Uname;

/// uname(2) fields, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// `platform.system()`: `Linux`, `FreeBSD`, ...
    pub system: String,
    /// `platform.node()`: the host name.
    pub node: String,
    pub release: String,
    /// `platform.version()`: the kernel build string.
    pub version: String,
    pub machine: String,
}

impl HostInfo {
    pub fn read() -> HostInfo {
        let u = nix::sys::utsname::uname().expect("uname(2) cannot fail");
        let s = |o: &std::ffi::OsStr| o.to_string_lossy().into_owned();
        HostInfo {
            system: s(u.sysname()),
            node: s(u.nodename()),
            release: s(u.release()),
            version: s(u.version()),
            machine: s(u.machine()),
        }
    }

    /// 0.1's `uname` array: system, node, release, version, machine, processor
    /// (we report the machine as the processor too).
    pub fn uname(&self) -> Uname {
        [
            self.system.clone(),
            self.node.clone(),
            self.release.clone(),
            self.version.clone(),
            self.machine.clone(),
            self.machine.clone(),
        ]
    }
}
