# Stand-in for debian:*-slim (the runtime stage): debootstrap's minbase bookworm as it is.
FROM herald-standin/base:bookworm
LABEL org.herald.standin=true
