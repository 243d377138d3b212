#!/bin/bash
# End-to-end test of contrib/init.d/debian/service-mgrd through service(8).
#
# Usage (as root, on a Debian host without systemd as PID 1, e.g. a CI
# container):  tests/contrib/debian-service.sh path/to/service-mgr
#
# The binary is installed into a scratch prefix (never over /usr), the daemon
# is configured to bind only 127.0.0.1 on free ports, and its pid and log
# files live in the scratch directory, so no real service of the machine is
# touched.  /etc/init.d/service-mgrd and /etc/default/service-mgrd are
# replaced for the duration of the test; any existing ones are moved aside
# and put back on exit.
#
# The scratch directory is created under $TMPDIR (default /tmp), which must
# not be mounted noexec: the daemon binary is run from there.
#
# Exit status: 0 all checks passed, 1 a check failed, 2 usage or setup error,
# 77 skipped (systemd is PID 1: service(8) would go through systemctl).

set -u

NAME=service-mgrd
INITSCRIPT=/etc/init.d/$NAME
DEFAULTS=/etc/default/$NAME

failures=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
die() { echo "ERROR: $*" >&2; exit 2; }

# --- preconditions --------------------------------------------------------

[ $# -eq 1 ] || die "usage: $0 path/to/service-mgr"
src_bin=$1
if [ ! -f "$src_bin" ] || [ ! -x "$src_bin" ]; then
	die "$src_bin is not an executable file"
fi
[ "$(id -u)" -eq 0 ] || die "must run as root (it installs $INITSCRIPT)"
[ -f /etc/debian_version ] || die "not a Debian system"
if [ -d /run/systemd/system ]; then
	echo "SKIP: systemd is running as PID 1; service(8) would use systemctl, not $INITSCRIPT"
	exit 77
fi
for tool in service start-stop-daemon python3 timeout; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

top=$(cd "$(dirname "$0")/../.." && pwd) || exit 2
script_src=$top/contrib/init.d/debian/$NAME
[ -f "$script_src" ] || die "$script_src not found"

# --- scratch area and cleanup ---------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/service-mgr-debian-test.XXXXXX") || exit 2
chmod 755 "$work"
prefix=$work/prefix
daemon_link=$prefix/sbin/service-mgrd
real_bin=$prefix/bin/service-mgr
config=$work/etc/service-mgrd.conf
# Directories that do not exist yet: the daemon has to create them.
pidfile=$work/run/service-mgr/service-mgrd.pid
logfile=$work/log/service-mgr/service-mgrd.log
backup=$work/backup
mkdir -p "$backup" "$work/etc"

real_bin_resolved=$real_bin
installed=()	# files this test put in place, removed on exit
moved=()	# original files moved to $backup, restored on exit
pids_seen=()	# daemon pids, killed on exit if still alive

# Kill a pid only if it is still our daemon (the binary in $prefix), so a
# recycled pid can never hit another process.
is_our_daemon() {
	local exe
	exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
	[ "${exe% (deleted)}" = "$real_bin_resolved" ]
}

# shellcheck disable=SC2317  # only invoked through the EXIT trap
cleanup() {
	local rc=$? pid f restore_failed=
	trap - EXIT HUP INT TERM
	# An interrupted start/restart may have left a daemon we never saw.
	[ -s "$pidfile" ] && read -r pid <"$pidfile" && pids_seen+=("$pid")
	for pid in "${pids_seen[@]}"; do
		if is_our_daemon "$pid"; then
			echo "cleanup: stopping leftover daemon pid $pid"
			kill -TERM "$pid" 2>/dev/null
			for _ in 1 2 3 4 5 6 7 8 9 10; do
				is_our_daemon "$pid" || break
				sleep 0.5
			done
			is_our_daemon "$pid" && kill -KILL "$pid" 2>/dev/null
		fi
	done
	for f in "${installed[@]}"; do
		rm -f "$f"
	done
	for f in "${moved[@]}"; do
		if ! mv "$backup/${f//\//_}" "$f"; then
			echo "cleanup: could not restore $f from $backup" >&2
			restore_failed=yes
		fi
	done
	if [ -n "$restore_failed" ]; then
		echo "cleanup: leaving $work in place" >&2
		rc=2
	else
		rm -rf "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 2' HUP INT TERM

# Put a file in place of $1 (content on stdin), moving any existing one aside.
install_file() {
	local dest=$1 mode=$2
	if [ -e "$dest" ] || [ -L "$dest" ]; then
		mv "$dest" "$backup/${dest//\//_}" || die "cannot move $dest aside"
		moved+=("$dest")
	fi
	installed+=("$dest")
	if ! cat >"$dest" || ! chmod "$mode" "$dest"; then
		die "cannot write $dest"
	fi
}

# --- install ----------------------------------------------------------------

mkdir -p "$prefix/bin" "$prefix/sbin"
install -m 755 "$src_bin" "$real_bin" || die "cannot install $real_bin"
# /proc/PID/exe shows the path with symlinks (e.g. in $TMPDIR) resolved.
real_bin_resolved=$(readlink -f "$real_bin")
# The packaged layout: sbin/service-mgrd -> ../bin/service-mgr.
ln -s ../bin/service-mgr "$daemon_link" || die "cannot create $daemon_link"

# Free loopback ports, chosen by the kernel.
read -r p_front p_back p_sink p_mgmt p_result < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
') || die "cannot pick free ports"
[ -n "$p_result" ] || die "cannot pick free ports"
mgmt=tcp://127.0.0.1:$p_mgmt

# Every endpoint, including the result publisher's, on 127.0.0.1.
cat >"$config" <<EOF
frontend_endpoint = "tcp://127.0.0.1:$p_front"
backend_endpoint = "tcp://127.0.0.1:$p_back"
sink_endpoint = "tcp://127.0.0.1:$p_sink"
mgmt_endpoint = "$mgmt"
result_endpoint = "tcp://127.0.0.1:$p_result"
state_dir = "$work/state"
EOF

install_file "$INITSCRIPT" 755 <"$script_src"
install_file "$DEFAULTS" 644 <<EOF
# Written by $0; removed when the test ends.
DAEMON=$daemon_link
CONFIG=$config
PIDFILE=$pidfile
LOGFILE=$logfile
DAEMON_OPTS=""
ENABLED=yes
EOF

echo "scratch dir $work, ports front=$p_front back=$p_back sink=$p_sink mgmt=$p_mgmt result=$p_result"

# --- helpers ----------------------------------------------------------------

# Run service(8) with a time limit; output is shown indented, status in $rc.
svc() {
	local out
	out=$(timeout 60 service "$NAME" "$@" 2>&1)
	rc=$?
	[ -n "$out" ] && printf '    %s\n' "${out//$'\n'/$'\n'    }"
	return 0
}

# The pid in the pid file, if it names a running service-mgr of ours.
daemon_pid() {
	local pid
	[ -s "$pidfile" ] || return 1
	read -r pid <"$pidfile" || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	is_our_daemon "$pid" || return 1
	echo "$pid"
}

# TCP sockets in LISTEN state owned by $1, as "address:port" (IPv4 in
# dotted form), read from /proc so that no iproute2/net-tools is needed.
listening_sockets() {
	python3 - "$1" <<'EOF'
import os, socket, struct, sys
pid = sys.argv[1]
inodes = set()
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    if target.startswith("socket:["):
        inodes.add(target[8:-1])
for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
    try:
        lines = open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        f = line.split()
        if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
            continue
        addr, port = f[1].split(":")
        raw = bytes.fromhex(addr)
        # /proc prints the address as 32-bit words in host byte order.
        host = "<" if sys.byteorder == "little" else ">"
        raw = b"".join(struct.pack(host + "I", w) for w in struct.unpack(f">{len(raw)//4}I", raw))
        print(f"{socket.inet_ntop(family, raw)}:{int(port, 16)}")
EOF
}

show_log() {
	echo "---- last lines of $logfile ----"
	tail -n 20 "$logfile" 2>/dev/null || echo "(no log file)"
	echo "--------------------------------"
}

# --- the exercise -------------------------------------------------------------

echo "== service $NAME start"
svc start
if [ "$rc" -eq 0 ]; then pass "service $NAME start exits 0"; else fail "service $NAME start exits $rc"; fi

if [ -s "$pidfile" ]; then
	pass "pid file $pidfile exists"
else
	fail "pid file $pidfile missing or empty"
fi
pid=$(daemon_pid) || pid=
if [ -n "$pid" ]; then
	pids_seen+=("$pid")
	pass "pid file names a live service-mgr process ($pid)"
else
	fail "pid file does not name a live service-mgr process ($(cat "$pidfile" 2>/dev/null))"
fi

if [ -e "$logfile" ]; then
	pass "log file $logfile exists"
else
	fail "log file $logfile missing"
fi

if [ -n "$pid" ]; then
	# The daemon holds a lock on its pid file; logrotate's postrotate and
	# the daemon's own "already running" check depend on it.
	if command -v pgrep >/dev/null 2>&1; then
		if [ "$(pgrep -L -F "$pidfile" 2>/dev/null)" = "$pid" ]; then
			pass "pid file is locked by the daemon"
		else
			fail "pid file is not locked by the daemon (pgrep -L -F)"
		fi
	else
		echo "SKIP: pgrep not found, pid file lock not checked"
	fi

	# Let the daemon finish binding before looking at its sockets.
	for _ in $(seq 1 50); do
		listening_sockets "$pid" | grep -qx "127.0.0.1:$p_mgmt" && break
		sleep 0.1
	done
	socks=$(listening_sockets "$pid" | sort)
	echo "    listening: ${socks//$'\n'/ }"
	if [ -n "$socks" ] && ! grep -vq '^127\.0\.0\.1:' <<<"$socks"; then
		pass "daemon listens on 127.0.0.1 only"
	else
		fail "daemon listens on other addresses than 127.0.0.1 (or on none)"
	fi
	if grep -qx "127.0.0.1:$p_mgmt" <<<"$socks"; then
		pass "daemon listens on the configured mgmt port $p_mgmt"
	else
		fail "daemon does not listen on the configured mgmt port $p_mgmt"
	fi
fi

echo "== service $NAME status (running)"
svc status
if [ "$rc" -eq 0 ]; then pass "service $NAME status exits 0"; else fail "service $NAME status exits $rc, want 0"; fi

echo "== $daemon_link -e $mgmt status"
out=$(timeout 30 "$daemon_link" -f "$config" -e "$mgmt" status 2>&1)
rc=$?
printf '    %s\n' "${out//$'\n'/$'\n'    }"
if [ "$rc" -eq 0 ]; then pass "service-mgrd -e ... status exits 0"; else fail "service-mgrd -e ... status exits $rc"; fi
if grep -q '"running"' <<<"$out"; then
	pass "management status answer contains \"running\""
else
	fail "management status answer lacks \"running\""
fi

echo "== service $NAME start (already running)"
svc start
pid2=$(daemon_pid) || pid2=
if [ "$rc" -eq 0 ] && [ -n "$pid" ] && [ "$pid2" = "$pid" ]; then
	pass "second start exits 0 and keeps pid $pid"
else
	fail "second start: exit $rc, pid $pid2 (was $pid)"
fi

echo "== service $NAME reload (SIGHUP: reopen the log file)"
mv "$logfile" "$logfile.1" 2>/dev/null
svc reload
pid2=$(daemon_pid) || pid2=
if [ "$rc" -eq 0 ] && [ -n "$pid" ] && [ "$pid2" = "$pid" ]; then
	pass "reload exits 0 and the daemon keeps running as $pid"
else
	fail "reload: exit $rc, pid $pid2 (was $pid)"
fi
for _ in $(seq 1 30); do
	[ -e "$logfile" ] && break
	sleep 0.1
done
if [ -e "$logfile" ]; then
	pass "after SIGHUP the daemon reopened $logfile"
else
	fail "after SIGHUP $logfile was not recreated"
fi

echo "== service $NAME restart"
svc restart
pid3=$(daemon_pid) || pid3=
[ -n "$pid3" ] && pids_seen+=("$pid3")
if [ "$rc" -eq 0 ] && [ -n "$pid3" ] && [ "$pid3" != "$pid" ]; then
	pass "restart exits 0 and a new daemon runs ($pid3)"
else
	fail "restart: exit $rc, pid '$pid3' (was $pid)"
fi
if [ -n "$pid" ] && is_our_daemon "$pid"; then
	fail "old daemon $pid still running after restart"
fi
[ -n "$pid3" ] && pid=$pid3

echo "== service $NAME stop"
svc stop
if [ "$rc" -eq 0 ]; then pass "service $NAME stop exits 0"; else fail "service $NAME stop exits $rc"; fi
if [ -n "$pid" ] && is_our_daemon "$pid"; then
	fail "daemon $pid still running after stop"
else
	pass "daemon process is gone"
fi
if [ -e "$pidfile" ]; then
	fail "pid file $pidfile left behind after stop"
else
	pass "pid file removed"
fi

echo "== service $NAME status (stopped)"
svc status
if [ "$rc" -eq 3 ]; then
	pass "service $NAME status exits 3 (not running)"
else
	fail "service $NAME status exits $rc, want 3"
fi

echo "== $daemon_link -e $mgmt status (stopped)"
out=$(timeout 30 "$daemon_link" -f "$config" -e "$mgmt" status 2>&1)
rc=$?
printf '    %s\n' "${out//$'\n'/$'\n'    }"
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then
	pass "service-mgrd -e ... status exits non-zero ($rc) with no daemon"
else
	fail "service-mgrd -e ... status exits $rc with no daemon (124 = hung, killed by timeout)"
fi

echo "== service $NAME stop (already stopped)"
svc stop
if [ "$rc" -eq 0 ]; then pass "stop of a stopped service exits 0"; else fail "stop of a stopped service exits $rc"; fi

if [ "$failures" -ne 0 ]; then
	show_log
	echo "$failures check(s) failed"
	exit 1
fi
echo "all checks passed"
exit 0
