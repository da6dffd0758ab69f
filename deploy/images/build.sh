#!/usr/bin/env bash
# Builds the gateway and publisher-bridge images with podman from deploy/docker/*.Dockerfile,
# without a registry (`--pull=never`: the base images are deploy/images/base.sh's local stand-ins,
# made first when missing), tagged as deploy/compose.yaml names them:
#   realtime-gateway/gateway:local, realtime-gateway/publisher-bridge:local
#
#   deploy/images/build.sh [--prebuilt [DIR]] [gateway] [publisher-bridge]
#       The default. `--target prebuilt` of the Dockerfiles: the runtime image with binaries
#       already built on this host (same Debian 12 glibc as the image), from DIR, else
#       target/release when it holds both binaries, else target/debug (what `cargo build` and
#       nextest leave there); it says which. The build context is a temporary directory holding
#       just the binary (.dockerignore keeps target/ out of the repository's context). Seconds.
#   deploy/images/build.sh --full [gateway] [publisher-bridge]
#       The Dockerfiles' default target: cargo build --release --locked inside the builder image
#       (the rust stand-in), the repository as the context. Its cargo reaches crates.io with the
#       host's CA certificates mounted read-only (BUILD_CA_DIR, default /etc/ssl/certs; empty: none)
#       and the host's network; the registry and target/ stay in buildah's cache mounts
#       (/var/tmp/buildah-cache) between builds. A cold build takes minutes (README,
#       "Container images").
# TAG_SUFFIX changes the tag (default local). Prints each image's size and build time.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
# shellcheck source=deploy/images/env.sh
. "$root/deploy/images/env.sh"

mode=prebuilt
bin_dir=
want=()
while (($#)); do
  case "$1" in
    --full) mode=full ;;
    --prebuilt)
      mode=prebuilt
      if [ $# -gt 1 ] && [ -d "$2" ]; then bin_dir="$(cd "$2" && pwd)"; shift; fi
      ;;
    gateway | publisher-bridge) want+=("$1") ;;
    *) echo "usage: $0 [--full | --prebuilt [DIR]] [gateway] [publisher-bridge]" >&2; exit 2 ;;
  esac
  shift
done
((${#want[@]})) || want=(gateway publisher-bridge)
tag_suffix="${TAG_SUFFIX:-local}"

if [ "$mode" = full ]; then
  "$root/deploy/images/base.sh" runtime rust
else
  "$root/deploy/images/base.sh" runtime
  if [ -z "$bin_dir" ]; then
    target="${CARGO_TARGET_DIR:-$root/target}"
    bin_dir="$target/debug"
    if [ -x "$target/release/gateway" ] && [ -x "$target/release/publisher-bridge" ]; then
      bin_dir="$target/release"
    fi
  fi
  echo "build.sh: prebuilt binaries from $bin_dir"
fi

work="$(mktemp -d "${TMPDIR:-/var/tmp}/image-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

for name in "${want[@]}"; do
  tag="realtime-gateway/$name:$tag_suffix"
  old="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
  started=$SECONDS
  args=(build --pull=never --layers=false -f "deploy/docker/$name.Dockerfile" -t "$tag")
  if [ "$mode" = full ]; then
    ca="${BUILD_CA_DIR-/etc/ssl/certs}"
    [ -z "$ca" ] || args+=(-v "$ca:/etc/ssl/certs:ro")
    echo "build.sh: podman ${args[*]} --network host ."
    podman "${args[@]}" --network host .
  else
    [ -x "$bin_dir/$name" ] || { echo "build.sh: $bin_dir/$name missing: cargo build -p $name first" >&2; exit 1; }
    rm -rf "$work/context" && mkdir -p "$work/context"
    install -m 0755 "$bin_dir/$name" "$work/context/$name"
    echo "build.sh: podman ${args[*]} --target prebuilt <context: $bin_dir/$name>"
    podman "${args[@]}" --target prebuilt -q "$work/context" >/dev/null
  fi
  # The image this build replaced, unless a container still uses it.
  if [ -n "$old" ] && [ -z "$(podman image inspect --format '{{.RepoTags}}' "$old" 2>/dev/null | tr -d '[]')" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
  echo "build.sh: built $tag ($mode, $((SECONDS - started)) s, $(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1 / 1e6}'))"
done
