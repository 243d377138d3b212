//! The one fake service(8) every test's agents run, and its call log.

use std::path::{Path, PathBuf};

/// A fake service(8): `fake NAME CMD`. Behaviour by name:
/// `slow*` sleeps 30 s, `snooze*` 4 s, `pause*` 1.5 s, `nap*` 1 s, `brief*` 0.3 s (each then answers),
/// `big*` prints 1 MiB plus bytes that are not UTF-8, `stopped*` exits 3,
/// `fail*` exits 1, anything else prints "NAME CMD ok" and exits 0.
/// Every call is appended to `calls.log` beside the script.
pub fn fake_service(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-service");
    let calls = dir.join("calls.log");
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
echo "$1 $2" >> '{calls}'
case "$1" in
  slow*) sleep 30 ;;
  snooze*) sleep 4; echo "$1 $2 ok" ;;
  pause*) sleep 1.5; echo "$1 $2 ok" ;;
  nap*) sleep 1; echo "$1 woke up" ;;
  brief*) sleep 0.3; echo "$1 $2 ok" ;;
  big*) head -c 1048576 /dev/zero | tr '\0' 'y'; printf '\377\376 not utf-8\n' ;;
  stopped*) echo "$1 is not running"; exit 3 ;;
  fail*) echo "$1: something broke" >&2; exit 1 ;;
  *) echo "$1 $2 ok" ;;
esac
"#,
            calls = calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Lines of the fake service's call log.
pub fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
