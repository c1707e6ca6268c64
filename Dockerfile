# Herald: multi-stage build. The dependency layer is rebuilt only when Cargo.toml or Cargo.lock change.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src src
COPY config config
COPY static static
COPY migrations migrations
# Touch so cargo rebuilds our crate over the placeholder built above.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Small runtime: Debian slim (glibc, as built above), no compiler, no shell tools needed by Herald.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER herald
ENV HERALD__SERVER__HOST=0.0.0.0 \
    HERALD__SERVER__PORT=8080
EXPOSE 8080
# `herald check` GETs /readyz: healthy only when the node can reach Redis and is not shutting down.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["herald", "check"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["herald"]
