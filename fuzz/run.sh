#!/usr/bin/env bash
# Fuzz every decoder of untrusted bytes with cargo-fuzz (libFuzzer), each
# target for FUZZ_SECONDS seconds (default 10), starting from its seeds.
#
#   bash fuzz/run.sh                          # every target, 10 s each
#   FUZZ_SECONDS=600 bash fuzz/run.sh signed  # one target, 10 minutes
#
# Seeds (fuzz/seeds/<target>/, in git) are only read; what libFuzzer learns
# goes to fuzz/corpus/<target>/ and crashes to fuzz/artifacts/<target>/ (both
# ignored by git). Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz --locked`); without them this says why and
# exits 0: tests/fuzz_smoke.rs runs the same targets on stable anyway.
# Extra libFuzzer flags: FUZZ_ARGS="-jobs=2 -workers=2".
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-10}
case $seconds in
  '' | *[!0-9]*)
    echo "fuzz/run.sh: FUZZ_SECONDS must be a number of seconds, not '$seconds'" >&2
    exit 2
    ;;
esac

skip() {
  echo "fuzz/run.sh: skipping fuzzing: $*"
  exit 0
}
command -v cargo >/dev/null || skip "cargo is not installed"
cargo +nightly --version >/dev/null 2>&1 ||
  skip "no nightly toolchain (rustup toolchain install nightly)"
cargo +nightly fuzz --version >/dev/null 2>&1 ||
  skip "cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
read -r -a extra <<<"${FUZZ_ARGS:-}"

failed=()
for t in "${targets[@]}"; do
  [ -d "fuzz/seeds/$t" ] || { echo "fuzz/run.sh: no seeds for target '$t'" >&2; exit 2; }
  mkdir -p "fuzz/corpus/$t"
  echo "fuzz/run.sh: $t for ${seconds}s"
  # The first directory receives new inputs; the seeds stay as they are.
  if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${extra[@]}"; then
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/run.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/;" \
    "replay one with: cargo +nightly fuzz run <target> <file>)" >&2
  exit 1
fi
echo "fuzz/run.sh: ${#targets[@]} targets, ${seconds}s each, no crash"
