#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine, from any directory:
#   1. deploy/install-deps.sh (idempotent: redis-server, postgresql, nats-server, ...);
#   2. the format and lint gates (cargo fmt --check, cargo clippy -D warnings), then every Rust
#      test of the workspace with all features, through cargo-nextest when installed (settings in
#      .config/nextest.toml), else `cargo test`;
#   3. the chart, deploy-file and browser tests (pytest: helm/tests, deploy/tests; the browser
#      test, deploy/tests/browser, drives headless Chromium against the real binaries);
#   4. the container images (deploy/tests/images): both built with podman from the Dockerfiles
#      on local base images (deploy/images; from the binaries step 2 built, no release build), the
#      bridge and two gateways run hardened as containers, an event through them, SIGTERM drains;
#   5. a fuzz smoke run: every cargo-fuzz target (fuzz/) for FUZZ_SECONDS (default 10) from its
#      committed seeds, with a fixed libFuzzer seed.
# Every step runs even if an earlier test step failed; the exit status is non-zero if any failed.
# Extra arguments go to the Rust test runner (for example a test name filter).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

failed=()

# run LABEL COMMAND...: runs one step, prints its outcome and remembers a failure.
run() {
  local label="$1"
  shift
  echo "test.sh: ==> $label"
  if "$@"; then
    echo "test.sh: ok: $label"
  else
    echo "test.sh: FAILED ($?): $label" >&2
    failed+=("$label")
  fi
}

# Installing is a precondition, not a test: stop right away if it fails.
echo "test.sh: ==> install dependencies"
./deploy/install-deps.sh

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo not found: install Rust (rustup)" >&2; exit 1; }

run "format (cargo fmt --check)" cargo fmt --all --check
run "lints (cargo clippy, warnings are errors)" cargo clippy --workspace --all-targets --all-features -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  run "rust tests (nextest)" cargo nextest run --workspace --all-features --no-fail-fast "$@"
  # nextest does not run doctests.
  run "rust doctests" cargo test --workspace --all-features --doc
else
  echo "test.sh: cargo-nextest not installed, using cargo test"
  run "rust tests (cargo test)" cargo test --workspace --all-features --no-fail-fast "$@"
fi

run "chart, deploy-file and browser tests (pytest)" \
  env PYTHONPATH="$root/.tools/chart-py:$root/.tools/browser-py" PYTHONDONTWRITEBYTECODE=1 \
  python3 -m pytest -q -p no:cacheprovider helm/tests deploy/tests --ignore=deploy/tests/images

run "container images (podman)" \
  env PYTHONPATH="$root/.tools/chart-py:$root/.tools/browser-py" PYTHONDONTWRITEBYTECODE=1 \
  python3 -m pytest -q -p no:cacheprovider deploy/tests/images

run "fuzz smoke (every target ${FUZZ_SECONDS:-10} s)" ./fuzz/run.sh "${FUZZ_SECONDS:-10}"

if ((${#failed[@]})); then
  echo "test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test.sh: all tests passed"
