# Stand-in for the official rust image (the build stage): Debian bookworm, the C toolchain cargo links
# with, and this machine's own Rust toolchain copied in (none can be downloaded here). Same paths as the
# official image: cargo on PATH under /usr/local/cargo.
FROM herald-standin/base:bookworm
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
# This machine's trust store: its egress proxy re-signs TLS, so cargo must trust what the host trusts.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
LABEL org.herald.standin=true
