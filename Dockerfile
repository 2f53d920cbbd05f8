# syntax=docker/dockerfile:1.7
# Builds both Ringstore images from one builder stage:
#   docker build --target node     -t ringstore:dev .
#   docker build --target operator -t ringstore-operator:dev .
# The final images hold one static-enough binary (glibc from the base image), run as uid 10001
# and need no shell; the Pods the operator creates add a read-only root file system.

ARG RUST_VERSION=1.95
ARG VERSION=0.1.0

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Everything the workspace needs to resolve (every member's manifest and sources); the
# .dockerignore keeps build output, data and packaging files out of the context.
COPY . .
# The registry, git checkouts and target folder live in BuildKit cache mounts, so rebuilds after a
# source change recompile only the workspace crates. The target folder is a cache mount, hence the
# binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p ringstore-server -p ringstore-operator \
 && mkdir -p /out/bin /out/data \
 && cp target/release/ringstore target/release/ringstore-operator /out/bin/

# Shared base of both images: distroless with glibc and libgcc, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION
LABEL org.opencontainers.image.vendor="Ringstore" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
USER 10001:10001

FROM runtime AS node
LABEL org.opencontainers.image.title="ringstore" \
      org.opencontainers.image.description="Ringstore storage node: an S3-compatible, erasure-coded object store"
COPY --from=builder /out/bin/ringstore /usr/local/bin/ringstore
# Mount points of the drives (/data/0, /data/1, ... are volumes on Kubernetes).
COPY --from=builder --chown=10001:10001 /out/data /data
# 9000: S3, admin API, /health/live, /health/ready, /_ringstore/metrics; 9100: node-to-node RPC
EXPOSE 9000 9100
ENTRYPOINT ["/usr/local/bin/ringstore"]
CMD ["server", "--address", "0.0.0.0:9000", "--data", "/data/0"]

FROM runtime AS operator
LABEL org.opencontainers.image.title="ringstore-operator" \
      org.opencontainers.image.description="Ringstore Kubernetes operator: reconciles Tenants and Pools"
COPY --from=builder /out/bin/ringstore-operator /usr/local/bin/ringstore-operator
# /metrics and /healthz
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ringstore-operator"]
