#!/bin/sh
# Static checks for the service files under contrib/:
#  - syntax check of every init.d / rc.d script (and of the scripts in
#    tests/contrib/) with the shell named in its shebang (the RHEL scripts
#    are bash: RHEL's functions library needs it),
#  - shellcheck, with the dialect of the shebang and per-file exclusions,
#  - systemd-analyze verify on the units (skipped if systemd-analyze is
#    missing),
#  - logrotate -d on the logrotate snippet (skipped if logrotate is missing).
# Exits non-zero if any check fails.

set -u

top=$(cd "$(dirname "$0")/../.." && pwd) || exit 1
contrib=$top/contrib
failures=0

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
skip() { echo "SKIP: $*"; }

# Per-file exclusions for the shellcheck run.  Nothing else may be excluded
# here; fix the script or use a commented inline directive instead.
excludes_for() {
	case "$1" in
	contrib/init.d/debian/*)
		# Sources /lib/lsb/init-functions and /etc/default/<name>,
		# which only exist on the target system.
		echo SC1091
		;;
	contrib/init.d/redhat/*)
		# Sources /etc/rc.d/init.d/functions and /etc/sysconfig/<name>,
		# which only exist on the target system.
		echo SC1091
		;;
	contrib/rc.d/*)
		# Sources /etc/rc.subr (FreeBSD only).  rc.subr reads name,
		# rcvar, command, pidfile, extra_commands, sig_reload, ... after
		# they are set, which shellcheck reports as unused (SC2034).
		echo SC1091,SC2034
		;;
	esac
}

scripts=$(cd "$top" && {
	find contrib/init.d contrib/rc.d -type f
	find tests/contrib -type f -name '*.sh'
} | LC_ALL=C sort)
case "$scripts" in
*contrib/init.d/*contrib/rc.d/*) ;;
*) fail "no scripts found under contrib/init.d or contrib/rc.d" ;;
esac

have_shellcheck=yes
if ! command -v shellcheck >/dev/null 2>&1; then
	have_shellcheck=no
	fail "shellcheck not found (Debian: apt-get install shellcheck)"
fi

for rel in $scripts; do
	file=$top/$rel
	shebang=$(head -n 1 "$file")
	case "$shebang" in
	'#!/bin/sh') dialect="sh" ;;
	'#!/bin/bash') dialect="bash" ;;
	*)
		fail "$rel: unexpected shebang '$shebang' (want #!/bin/sh or #!/bin/bash)"
		continue
		;;
	esac

	# Installed by plain cp, so the mode in the tree is the installed one.
	if [ -x "$file" ]; then
		pass "$rel: executable"
	else
		fail "$rel: not executable"
	fi

	if out=$($dialect -n "$file" 2>&1); then
		pass "$rel: $dialect -n"
	else
		fail "$rel: $dialect -n"
		printf '%s\n' "$out"
	fi

	[ "$have_shellcheck" = yes ] || continue
	excl=$(excludes_for "$rel")
	if out=$(shellcheck -s "$dialect" ${excl:+-e "$excl"} "$file" 2>&1); then
		pass "$rel: shellcheck -s $dialect${excl:+ -e $excl}"
	else
		fail "$rel: shellcheck -s $dialect${excl:+ -e $excl}"
		printf '%s\n' "$out"
	fi
done

# systemd-analyze verify checks that ExecStart= binaries exist, which they
# do not on a build host.  Verify inside a scratch root holding a copy of
# the system's units, the units under test and stub executables instead.
units=$(cd "$contrib" && find systemd -type f -name '*.service' | LC_ALL=C sort)
if ! command -v systemd-analyze >/dev/null 2>&1; then
	skip "systemd-analyze not found, units not verified"
elif [ -z "$units" ]; then
	fail "no units found under $contrib/systemd"
else
	root=$(mktemp -d "${TMPDIR:-/tmp}/check-units.XXXXXX") || exit 1
	trap 'rm -rf "$root"' EXIT
	trap 'exit 1' HUP INT TERM
	mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" \
		"$root/usr/bin" "$root/usr/sbin"
	for d in bin sbin lib; do
		ln -s "usr/$d" "$root/$d"
	done
	cp -R /usr/lib/systemd/system "$root/usr/lib/systemd/"
	for rel in $units; do
		cp "$contrib/$rel" "$root/etc/systemd/system/"
		# Stub every absolute executable named by an Exec*= line.
		sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\(\/[^ ]*\).*/\1/p' \
			"$contrib/$rel" |
		while read -r exe; do
			[ -e "$root$exe" ] && continue
			mkdir -p "$root$(dirname "$exe")"
			printf '#!/bin/sh\n' >"$root$exe"
			chmod 755 "$root$exe"
		done
	done
	# All units in one run: verify also loads the units a unit refers
	# to (the agent's After=service-mgrd.service), so per-unit runs would
	# report a problem of one unit under the other's name.
	# verify exits 0 on unknown keys or bad values (it only warns), so any
	# output counts as a failure.
	names=$(for rel in $units; do basename "$rel"; done)
	# shellcheck disable=SC2086  # one argument per unit name
	out=$(systemd-analyze verify --man=no --root="$root" $names 2>&1)
	rc=$?
	if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
		pass "systemd-analyze verify $(echo "$units" | tr '\n' ' ')"
	else
		fail "systemd-analyze verify $(echo "$units" | tr '\n' ' ')(exit $rc)"
		printf '%s\n' "$out" | sed "s|$root||g"
	fi
fi

if ! command -v logrotate >/dev/null 2>&1; then
	skip "logrotate not found, contrib/logrotate not checked"
else
	for file in "$contrib"/logrotate/*; do
		rel=${file#"$contrib"/}
		# -d: debug/dry run; a private state file keeps the system's alone.
		state=$(mktemp "${TMPDIR:-/tmp}/logrotate-state.XXXXXX") || exit 1
		out=$(logrotate -d -s "$state" "$file" 2>&1)
		rc=$?
		rm -f "$state"
		if [ "$rc" -eq 0 ] && ! printf '%s\n' "$out" | grep -q '^error:'; then
			pass "$rel: logrotate -d"
		else
			fail "$rel: logrotate -d (exit $rc)"
			printf '%s\n' "$out"
		fi
	done
fi

if [ "$failures" -ne 0 ]; then
	echo "$failures check(s) failed"
	exit 1
fi
echo "all checks passed"
