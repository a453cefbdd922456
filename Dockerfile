# syntax=docker/dockerfile:1
# The deprovision worker image: a Rust build stage and a distroless runtime that
# holds only the binary, CA certificates and glibc, running as a non-root user.
# Built where a Docker engine exists (deploy/README.md, step 2):
#   docker build -t deprovision .
# Linted by scripts/lint-deploy.sh (hadolint).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target directory between builds;
# the binary is copied out because the target directory is not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin deprovision \
    && install -D -m 0755 target/release/deprovision /out/deprovision

# cc-debian12 matches the builder's glibc (bookworm) and ships CA certificates
# for rustls; the :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/deprovision /usr/local/bin/deprovision
USER 65532:65532
ENV LOG_FORMAT=json \
    HEALTH_ADDR=0.0.0.0:8080
# /healthz and /metrics (Prometheus text) of `deprovision serve`.
EXPOSE 8080
# distroless has no shell or curl: the binary probes its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/deprovision", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/deprovision"]
CMD ["serve"]
