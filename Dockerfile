# Herald: multi-stage build. The dependency layer is rebuilt only when a Cargo manifest or the lock changes;
# a change to the sources rebuilds only Herald's own crate.
# Base images are pinned; deploy/compose-test.sh builds stand-ins with these names where no registry is
# reachable (README, "Deployment").
FROM rust:1.95.0-bookworm AS build
# Lets deploy/compose-test.sh clean up the intermediate images of this stage, and nothing else.
LABEL org.herald.stage=build
WORKDIR /src
# The workspace names bench/ as a member, so its manifest (and a stub target) must be there to resolve it.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src bench/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && cargo build --release --locked -p herald \
 && rm -rf src
# Files built into the binary, the least often changed first.
COPY static static
COPY docs/openapi.yaml docs/openapi.yaml
COPY config config
COPY migrations migrations
COPY src src
# Touch so cargo rebuilds our crate over the placeholder; the binary is moved out and target/ dropped, so
# this layer stays small (the dependencies stay in the layer above).
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked -p herald \
 && mv target/release/herald /herald \
 && rm -rf target

# Small runtime: Debian slim (glibc, as built above), no compiler, no shell tools needed by Herald.
FROM debian:12.12-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin herald
# config/ beside the working directory, so HERALD_ENV=production finds config/production.toml.
WORKDIR /srv/herald
ENV HERALD__SERVER__HOST=0.0.0.0 \
    HERALD__SERVER__PORT=8080
EXPOSE 8080
# `herald check` GETs /readyz: healthy only when the node can reach Redis and is not shutting down.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["herald", "check"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["herald"]
USER herald
COPY config config
COPY --from=build /herald /usr/local/bin/herald
