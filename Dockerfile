# syntax=docker/dockerfile:1
#
# Container image of tokensync: a Debian 12 (bookworm) build stage with Rust,
# and a distroless runtime stage of the same Debian release, which has glibc,
# libgcc, the CA certificates that TLS to the issuers needs, and the user
# "nonroot" (65532), but no shell and no package manager.
#
#   docker build --build-arg TOKENSYNC_REVISION="$(git rev-parse --short HEAD)" -t tokensync .
#   docker run --rm -p 127.0.0.1:8417:8417 tokensync demo --web.listen-address :8417
#
# Mount the configuration at /etc/tokensync/tokensync.yaml, the secrets it
# names, and writable directories for its sinks (deploy/README.md).
#
# The HEALTHCHECK runs `tokensync status`, which reads /api/v1/status from
# the listener and exits 1 while a token is not valid or needs
# re-authentication. Docker then marks the container unhealthy but does not
# restart it. Kubernetes ignores HEALTHCHECK and uses the probes in
# deploy/kubernetes instead.
#
# NOTE: checked by tests/deploy.rs and by reading only; no image has been
# built from this file yet.

ARG RUST_IMAGE=rust:1.89-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Reported by tokensync_build_info{revision}.
ARG TOKENSYNC_REVISION=unknown
ENV TOKENSYNC_REVISION=${TOKENSYNC_REVISION}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tokensync \
    && install -D -m 0755 target/release/tokensync /out/usr/local/bin/tokensync \
    && install -d -m 0700 /out/var/lib/tokensync /out/run/tokensync

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/usr/local/bin/tokensync /usr/local/bin/tokensync
# Owned by the runtime user, for a container started without volumes there.
COPY --from=build --chown=65532:65532 /out/var/lib/tokensync /var/lib/tokensync
COPY --from=build --chown=65532:65532 /out/run/tokensync /run/tokensync
USER 65532:65532
EXPOSE 8417
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/tokensync", "status", "--url", "http://127.0.0.1:8417"]
ENTRYPOINT ["/usr/local/bin/tokensync"]
CMD ["run", "--config", "/etc/tokensync/tokensync.yaml", "--web.listen-address", ":8417"]
