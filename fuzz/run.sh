#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, from the committed seeds
# (fuzz/seeds/<target>) and the local corpus (fuzz/corpus/<target>, not committed, grows).
#   fuzz/run.sh 10            a smoke run (10 s per target)
#   fuzz/run.sh 600 envelope  a longer run of one target
# Needs the nightly toolchain and cargo-fuzz (README "Fuzzing" says how to install). Builds all
# targets once, then runs each; a crash leaves its input in fuzz/artifacts/<target>/ and makes
# the script fail after the other targets have run. FUZZ_SEED fixes libFuzzer's seed (default 1:
# a smoke run explores the same way each time); FUZZ_ARGS adds libFuzzer options (for example
# FUZZ_ARGS=-runs=10000000 stops each target after ten million executions). FUZZ_SANITIZER
# picks cargo-fuzz's sanitizer: `none` by default (the parsers are safe Rust; without
# AddressSanitizer the build takes about half as long and runs about twice as fast), `address`
# to check the unsafe code of dependencies too.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
if (($#)); then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi

sanitizer="${FUZZ_SANITIZER:-none}"
cargo +nightly fuzz build --sanitizer "$sanitizer"
failed=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
  if ! cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -seed="${FUZZ_SEED:-1}" -print_final_stats=1 ${FUZZ_ARGS:-} 2>"corpus/$target.log"; then
    tail -n 40 "corpus/$target.log" >&2
    failed+=("$target")
  fi
  grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "corpus/$target.log" | sed "s/^/fuzz: $target: /" || true
done
if ((${#failed[@]})); then
  echo "fuzz: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
