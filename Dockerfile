# syntax=docker/dockerfile:1.7
# fleetstream services: one build of the workspace, one small runtime image per service.
#
#   docker build --target receiver  -t fleetstream/receiver:0.1.0 .    (docker compose does this)
#   targets: receiver, processor, tracker, obu-sim, dlq
#
# Only the service binaries are built (and the `healthcheck` probe every image carries): not the
# benchmark tools of crates/bench, the test kit or kafka-local, which have no place in an image.
#
# Dependencies are cached between builds: the cargo registry, git checkouts and the target
# directory live in BuildKit cache mounts, so a change to one crate recompiles that crate, not
# librdkafka and the other ~300 dependencies. (BuildKit is the default builder of Docker 23+;
# with the legacy docker-compose 1.x set DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1.)

# The toolchain CI uses; trixie, like the runtime image below (same glibc).
FROM rust:1.95.0-trixie AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
RUN --mount=type=cache,id=fleetstream-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=fleetstream-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=fleetstream-target,target=/src/target,sharing=locked \
    cargo build --release --locked \
      -p fleetstream-receiver --bin receiver \
      -p fleetstream-processor --bin processor \
      -p fleetstream-tracker --bin tracker \
      -p fleetstream-obu-sim --bin obu-sim \
      -p fleetstream-dlq --bin dlq \
      -p fleetstream-healthcheck --bin healthcheck \
 && mkdir -p /out \
 && for bin in receiver processor tracker obu-sim dlq healthcheck; do cp "target/release/$bin" /out/; done \
 && strip --strip-debug /out/*

# Shared runtime: Debian slim (glibc, zlib — all the binaries link against), an unprivileged
# user, and the health probe (crates/healthcheck: HTTP or HTTPS, no curl needed).
FROM debian:13.1-slim AS runtime
RUN groupadd --system --gid 10001 fleetstream \
 && useradd --system --uid 10001 --gid fleetstream --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin fleetstream
COPY --from=build /out/healthcheck /usr/local/bin/healthcheck
WORKDIR /tmp
USER 10001:10001
ENV LOG_FORMAT=json

FROM runtime AS receiver
COPY --from=build /out/receiver /usr/local/bin/receiver
EXPOSE 30000
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=6 CMD ["healthcheck", "30000", "/readyz"]
ENTRYPOINT ["/usr/local/bin/receiver"]

FROM runtime AS processor
COPY --from=build /out/processor /usr/local/bin/processor
EXPOSE 30001
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=6 CMD ["healthcheck", "30001", "/readyz"]
ENTRYPOINT ["/usr/local/bin/processor"]

FROM runtime AS tracker
COPY --from=build /out/tracker /usr/local/bin/tracker
# Reads DATABASE_URL from the secret file /run/secrets/database-url when it is not set.
COPY --chmod=0755 docker/tracker /usr/local/bin/tracker-entrypoint
EXPOSE 30002
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=6 CMD ["healthcheck", "30002", "/readyz"]
ENTRYPOINT ["/usr/local/bin/tracker-entrypoint"]

FROM runtime AS obu-sim
COPY --from=build /out/obu-sim /usr/local/bin/obu-sim
COPY --chmod=0755 docker/obu-sim /usr/local/bin/obu-sim-entrypoint
ENV SIM_METRICS_LISTEN=0.0.0.0:30003
EXPOSE 30003
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["healthcheck", "30003", "/healthz"]
ENTRYPOINT ["/usr/local/bin/obu-sim-entrypoint"]

# The dead-letter tool (docs/operations.md, "Dead letters"), e.g.
#   docker run --rm --network fleetstream_default fleetstream/dlq:0.1.0 --kafka-brokers kafka:9092 count
FROM runtime AS dlq
COPY --from=build /out/dlq /usr/local/bin/dlq
ENTRYPOINT ["/usr/local/bin/dlq"]
