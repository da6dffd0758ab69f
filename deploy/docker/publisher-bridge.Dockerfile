# syntax=docker/dockerfile:1.7
# The publisher-bridge (Redis -> NATS JetStream) in a small non-root image. Build from the
# repository root:
#   docker build -f deploy/docker/publisher-bridge.Dockerfile -t realtime-gateway/publisher-bridge:0.1.0 .
# or from a prebuilt binary: `--target prebuilt` with a directory holding ./publisher-bridge as the
# build context (deploy/images/build.sh).
#
# Same shape as gateway.Dockerfile: the runtime settings, a `prebuilt` target, a builder with
# BuildKit cache mounts compiling only this binary from Cargo.lock, then distroless/cc as user
# 65532 with nothing writable needed.

ARG RUST_VERSION=1.95

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532
ENV BRIDGE_LISTEN_ADDR=0.0.0.0:9100 \
    LOG_FORMAT=json
# /livez, /readyz, /metrics.
EXPOSE 9100
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/publisher-bridge"]

FROM runtime AS prebuilt
COPY publisher-bridge /usr/local/bin/publisher-bridge

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,id=realtime-gateway-target,sharing=locked \
    cargo build --release --locked -p publisher-bridge --bin publisher-bridge \
    && install -D -m 0755 target/release/publisher-bridge /out/publisher-bridge

FROM runtime
COPY --from=builder /out/publisher-bridge /usr/local/bin/publisher-bridge
