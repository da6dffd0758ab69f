#!/usr/bin/env bash
# LOCAL STAND-INS for the two registry images that deploy/docker/*.Dockerfile start FROM (and, on
# request, the three deploy/compose.yaml runs), for hosts with podman but no reachable container
# registry (the reference machine and CI). They are
# tagged with the SAME NAMES as the registry images, so that the Dockerfiles build unchanged with
# `podman build --pull=never` (deploy/images/build.sh), but they are NOT those images: they are
# built here from Debian bookworm packages (debootstrap, from deb.debian.org) and this machine's
# Rust toolchain. Where a registry is reachable, pull the real images instead and skip this script.
#
#   gcr.io/distroless/cc-debian12:nonroot   stand-in for Google's distroless/cc: the files of the
#       packages distroless/cc-debian12 is made of (libc6, libgcc-s1, libgomp1, libstdc++6,
#       libssl3, tzdata, netbase, base-files) taken out of a bookworm debootstrap, the CA bundle
#       /etc/ssl/certs/ca-certificates.crt, /etc/passwd and /etc/group with root, nobody and
#       nonroot (65532), /home/nonroot, /tmp; USER 65532, WORKDIR /home/nonroot. No shell, no apt,
#       no dpkg, no docs.
#   docker.io/library/rust:<X.Y>-slim-bookworm   stand-in for the Docker Official rust image (what
#       `FROM rust:<X.Y>-slim-bookworm` names): a bookworm minbase with gcc, libc6-dev, pkg-config
#       and ca-certificates, plus the host's rustup toolchain ($RUST_TOOLCHAIN, default stable;
#       X.Y is its version; its HTML docs left out) and rustup, under RUSTUP_HOME=/usr/local/rustup
#       and CARGO_HOME=/usr/local/cargo with /usr/local/cargo/bin first in PATH, as in the official
#       image.
#
#   nats:2-alpine, redis:7-alpine, haproxy:2.8-alpine (docker.io/library/...), only with the
#       argument `compose`: stand-ins for the third-party images deploy/compose.yaml runs, one
#       bookworm image with Debian's redis-server, haproxy and wget plus .tools/bin/nats-server,
#       tagged three times with the official images' entrypoints and commands (redis-server
#       without protected mode, as the official entrypoint does; haproxy -f
#       /usr/local/etc/haproxy/haproxy.cfg; nats-server). Debian, not Alpine, inside.
#
# Usage: deploy/images/base.sh [--force] [runtime] [rust] [compose]   (no name: runtime and rust)
#   An image whose tag exists already is kept (--force builds it again). The debootstrapped root
#   filesystem is cached as .tools/images/bookworm-<hash>.tar (the hash covers suite and package
#   list), so building again takes seconds, not a download; delete it to re-bootstrap.
# Needs root (debootstrap, rootful podman) and deploy/install-deps.sh's podman and debootstrap.
# DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/images/env.sh
. "$root/deploy/images/env.sh"

RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Both images come out of one bootstrap: the builder's packages plus what the runtime carries.
INCLUDE=ca-certificates,tzdata,netbase,libssl3,libgomp1,gcc,libc6-dev,pkg-config
# The runtime's packages (distroless/cc-debian12's list), copied file by file.
RUNTIME_PACKAGES=(base-files netbase tzdata libc6 libgcc-s1 libgomp1 libstdc++6 libssl3)

force=0
want=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    runtime | rust | compose) want+=("$arg") ;;
    *) echo "usage: $0 [--force] [runtime] [rust] [compose]" >&2; exit 2 ;;
  esac
done
((${#want[@]})) || want=(runtime rust)

[ "$(id -u)" -eq 0 ] || { echo "base.sh: needs root (debootstrap and rootful podman)" >&2; exit 1; }
command -v podman >/dev/null 2>&1 && [ -x /usr/sbin/debootstrap ] \
  || { echo "base.sh: podman or debootstrap missing: run deploy/install-deps.sh" >&2; exit 1; }

if ! command -v rustc >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

exists() { podman image exists "$1"; }

work="$(mktemp -d "${TMPDIR:-/var/tmp}/base-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# rootfs DIR: the bootstrapped bookworm in DIR, from the cached tarball (made on first use).
rootfs() {
  local hash cache
  hash="$(printf '%s %s %s' "$SUITE" "$INCLUDE" minbase | sha256sum | cut -c1-12)"
  cache="$root/.tools/images/$SUITE-$hash.tar"
  if [ ! -f "$cache" ]; then
    echo "base.sh: debootstrap --variant=minbase $SUITE (+ $INCLUDE) from $MIRROR"
    local started=$SECONDS boot="$work/bootstrap"
    /usr/sbin/debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$boot" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
      || { tail -n 30 "$work/debootstrap.log" >&2; echo "base.sh: debootstrap failed" >&2; exit 1; }
    mkdir -p "$(dirname "$cache")"
    # Nothing of the host's may stay in an image: debootstrap copies its resolv.conf and hostname.
    rm -rf "$boot"/var/cache/apt/archives/*.deb "$boot"/var/lib/apt/lists/* "$boot"/etc/resolv.conf "$boot"/etc/hostname
    tar --numeric-owner -C "$boot" -cf "$cache.part" .
    mv "$cache.part" "$cache"
    rm -rf "$boot"
    echo "base.sh: cached the root filesystem as ${cache#"$root"/} ($((SECONDS - started)) s)"
  fi
  mkdir -p "$1"
  tar --numeric-owner -C "$1" -xf "$cache"
}

build_runtime() {
  local full="$work/full" out="$work/runtime" list="$work/runtime.files"
  rootfs "$full"
  mkdir -p "$out"
  # The merged-/usr symlinks first (bin -> usr/bin, lib -> usr/lib, ...), so that the packages'
  # /lib/... paths land in /usr/lib as in the source.
  for link in bin sbin lib lib32 lib64 libx32; do
    if [ -L "$full/$link" ]; then
      cp -a "$full/$link" "$out/"
      mkdir -p "$out/$(readlink "$full/$link")"
    fi
  done
  local pkg found
  : >"$list"
  for pkg in "${RUNTIME_PACKAGES[@]}"; do
    found=0
    for f in "$full/var/lib/dpkg/info/$pkg.list" "$full/var/lib/dpkg/info/$pkg":*.list; do
      [ -f "$f" ] || continue
      found=1
      # Files and symlinks only (tar creates the directories), without docs, manuals, lintian
      # overrides and the maintainer's leftovers.
      while IFS= read -r path; do
        case "$path" in
          /usr/share/doc/* | /usr/share/man/* | /usr/share/info/* | /usr/share/lintian/* | /usr/share/bug/*) continue ;;
        esac
        if [ -L "$full$path" ] || [ -f "$full$path" ]; then printf '%s\n' "${path#/}"; fi
      done <"$f" >>"$list"
    done
    [ "$found" = 1 ] || { echo "base.sh: package $pkg is not in the bootstrap" >&2; exit 1; }
  done
  printf "%s\n" etc/ssl/certs/ca-certificates.crt etc/ld.so.cache >>"$list"
  (cd "$full" && tar --numeric-owner --no-recursion -cf - -T "$list") | tar --numeric-owner -C "$out" -xf -
  mkdir -p "$out/etc" "$out/tmp" "$out/root" "$out/home/nonroot"
  chmod 1777 "$out/tmp"
  chmod 0700 "$out/root" "$out/home/nonroot"
  chown 65532:65532 "$out/home/nonroot"
  cat >"$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
  cat >"$out/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
GROUP
  tar --numeric-owner -C "$out" -cf - . | podman import -q \
    --change 'USER 65532' \
    --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'LABEL org.opencontainers.image.description="LOCAL STAND-IN for gcr.io/distroless/cc-debian12:nonroot, built by deploy/images/base.sh from Debian bookworm"' \
    - "$RUNTIME_IMAGE" >/dev/null
  rm -rf "$full" "$out"
}

build_rust() {
  local tag="$1" toolchain_dir="$2" name="$3" version="$4" full="$work/rust"
  rootfs "$full"
  rm -rf "$full"/usr/share/doc/* "$full"/usr/share/man/* "$full"/usr/share/info/*
  local dest="$full/usr/local/rustup/toolchains/$name"
  mkdir -p "$dest" "$full/usr/local/cargo/bin"
  tar -C "$toolchain_dir" --exclude=./share/doc -cf - . | tar -C "$dest" -xf -
  # The docs are left out: do not let rustup believe they are there.
  sed -i '/^rust-docs-/d' "$dest/lib/rustlib/components"
  rm -f "$dest"/lib/rustlib/manifest-rust-docs-*
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$name" >"$full/usr/local/rustup/settings.toml"
  install -m 0755 "$(command -v rustup)" "$full/usr/local/cargo/bin/rustup"
  local proxy
  for proxy in cargo rustc rustdoc cargo-clippy clippy-driver rustfmt cargo-fmt rust-gdb rust-lldb; do
    ln -s rustup "$full/usr/local/cargo/bin/$proxy"
  done
  chmod -R a+w "$full/usr/local/rustup" "$full/usr/local/cargo"
  tar --numeric-owner -C "$full" -cf - . | podman import -q \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV RUST_VERSION=$version" \
    --change "LABEL org.opencontainers.image.description=\"LOCAL STAND-IN for $tag, built by deploy/images/base.sh from Debian bookworm and the host's $name\"" \
    - "$tag" >/dev/null
  rm -rf "$full"
}

COMPOSE_IMAGES=(docker.io/library/nats:2-alpine docker.io/library/redis:7-alpine docker.io/library/haproxy:2.8-alpine)

build_compose() {
  local full="$work/compose-root" ctx="$work/compose-context" base=localhost/realtime-gateway-standin/bookworm:build
  local nats="$root/.tools/bin/nats-server"
  [ -x "$nats" ] || { echo "base.sh: $nats missing: run deploy/install-deps.sh" >&2; exit 1; }
  rootfs "$full"
  tar --numeric-owner -C "$full" -cf - . | podman import -q - "$base" >/dev/null
  rm -rf "$full"
  mkdir -p "$ctx"
  cp -L "$nats" "$ctx/nats-server"
  cat >"$ctx/redis-entrypoint.sh" <<'ENTRY'
#!/bin/sh
# As the official redis image's entrypoint does when no config file is given: no protected mode.
if [ "$1" = redis-server ]; then shift; exec redis-server "$@" --protected-mode no; fi
exec "$@"
ENTRY
  chmod 0755 "$ctx/redis-entrypoint.sh"
  cat >"$ctx/Containerfile" <<CONTAINERFILE
FROM $base AS base
RUN export DEBIAN_FRONTEND=noninteractive && apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server haproxy wget >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*
COPY nats-server /usr/local/bin/nats-server
LABEL org.opencontainers.image.description="LOCAL STAND-IN for a compose image, built by deploy/images/base.sh from Debian bookworm"
FROM base AS nats
ENTRYPOINT ["nats-server"]
FROM base AS redis
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
FROM base AS haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
CONTAINERFILE
  local image
  for image in "${COMPOSE_IMAGES[@]}"; do
    # apt inside the build: the host's network.
    podman build -q --pull=never --network host --target "$(basename "${image%%:*}")" -t "$image" "$ctx" >/dev/null
  done
  podman rmi "$base" >/dev/null 2>&1 || true
  rm -rf "$ctx"
}

# drop_replaced ID: the image a rebuild untagged, unless something still uses it.
drop_replaced() {
  if [ -n "$1" ] && [ -z "$(podman image inspect --format '{{.RepoTags}}' "$1" 2>/dev/null | tr -d '[]')" ]; then
    podman rmi "$1" >/dev/null 2>&1 || true
  fi
}

for which in "${want[@]}"; do
  started=$SECONDS
  case "$which" in
    runtime)
      if exists "$RUNTIME_IMAGE" && [ "$force" = 0 ]; then
        echo "base.sh: $RUNTIME_IMAGE exists (--force builds it again)"
        continue
      fi
      tag="$RUNTIME_IMAGE"
      old="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
      build_runtime
      ;;
    compose)
      missing=0
      for image in "${COMPOSE_IMAGES[@]}"; do exists "$image" || missing=1; done
      if [ "$missing" = 0 ] && [ "$force" = 0 ]; then
        echo "base.sh: ${COMPOSE_IMAGES[*]} exist (--force builds them again)"
        continue
      fi
      old=
      build_compose
      tag="${COMPOSE_IMAGES[*]}"
      ;;
    rust)
      command -v rustup >/dev/null 2>&1 || { echo "base.sh: rustup not found: the rust image copies the host's toolchain" >&2; exit 1; }
      toolchain="${RUST_TOOLCHAIN:-stable}"
      rustc_path="$(rustup which --toolchain "$toolchain" rustc)"
      toolchain_dir="$(dirname "$(dirname "$rustc_path")")"
      version="$("$rustc_path" --version | awk '{print $2}')"
      host="$("$rustc_path" -vV | sed -n 's/^host: //p')"
      tag="docker.io/library/rust:${version%.*}-slim-bookworm"
      if exists "$tag" && [ "$force" = 0 ]; then
        echo "base.sh: $tag exists (--force builds it again)"
        continue
      fi
      old="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
      build_rust "$tag" "$toolchain_dir" "$version-$host" "$version"
      ;;
  esac
  drop_replaced "$old"
  echo "base.sh: built $tag ($((SECONDS - started)) s, $(podman image inspect --format '{{.Size}}' "${tag%% *}" | awk '{printf "%.0f MB", $1 / 1e6}'))"
done
