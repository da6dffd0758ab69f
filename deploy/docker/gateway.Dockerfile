# syntax=docker/dockerfile:1.7
# The gateway in a small non-root image. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t realtime-gateway/gateway:0.1.0 .
# or, with a binary built outside (cargo build -p gateway on Debian 12 / glibc 2.36 or older) in a
# directory of its own as the build context (deploy/images/build.sh does this):
#   docker build -f deploy/docker/gateway.Dockerfile --target prebuilt -t ... <dir holding ./gateway>
#
# Builder: the Rust toolchain compiles only the gateway (`--locked`: exactly Cargo.lock). BuildKit
# cache mounts keep the crates.io registry and target/ between builds, so a source change
# recompiles only the workspace crates; the binary is copied out of the cache in the same step.
# Runtime: distroless/cc (glibc and libgcc for the Rust binary, CA certificates, no shell, no
# package manager), user 65532. The binary needs no writable path: the root filesystem can be
# read-only. No HEALTHCHECK: the image has no shell or HTTP client to run one; orchestrators
# probe /livez and /readyz (Kubernetes, see helm/), HAProxy checks /readyz.
# Only the stages the target needs are built (BuildKit; buildah/podman 4 alike): the default
# target never reads ./gateway from the context, `--target prebuilt` never runs cargo.

ARG RUST_VERSION=1.95

# Debian 12, like the builder: the binary links against the same glibc.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532
ENV GATEWAY_LISTEN_ADDR=0.0.0.0:8001 \
    LOG_FORMAT=json
# WebSockets (/ws/waiter, /ws/kitchen, /ws/admin, /ws/diner), /ws/health, /metrics, /livez, /readyz.
EXPOSE 8001
# SIGTERM starts the drain: readiness off, 1012 closes spread over GATEWAY_DRAIN_WINDOW.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gateway"]

# The runtime with a binary from the build context (mode 0755, owned by root).
FROM runtime AS prebuilt
COPY gateway /usr/local/bin/gateway

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,id=realtime-gateway-target,sharing=locked \
    cargo build --release --locked -p gateway --bin gateway \
    && install -D -m 0755 target/release/gateway /out/gateway

# The default target: the runtime with the binary compiled above.
FROM runtime
COPY --from=builder /out/gateway /usr/local/bin/gateway
