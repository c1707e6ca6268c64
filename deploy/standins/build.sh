#!/usr/bin/env bash
# Builds stand-ins for the base images that Dockerfile and docker-compose.yml name, on a Docker engine
# that cannot pull them (no registry reachable). Each stand-in is made from Debian's packages
# (debootstrap + `docker import`, then the *.Dockerfile beside this script) and tagged with the very
# name the files use, so `docker compose up --build` runs unchanged.
#
# - A name that already exists and is not a stand-in (a real pulled image) is left alone.
# - Stand-ins are labelled org.herald.standin=true and kept in the engine: later runs reuse them
#   (STANDIN_REBUILD=1 builds them again). Nothing else is removed or retagged.
# - The Rust build stage gets this machine's Rust toolchain (no toolchain can be downloaded here).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
base=herald-standin/base:bookworm
say() { echo "standins: $*" >&2; }

is_standin() { [ "$(docker image inspect -f '{{index .Config.Labels "org.herald.standin"}}' "$1" 2>/dev/null)" = true ]; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }

# Whether NAME should be (re)built: missing, or a stand-in asked to be rebuilt. Real images are kept.
wanted() {
  if ! exists "$1"; then return 0; fi
  if ! is_standin "$1"; then say "$1 is a real image here: used as it is"; return 1; fi
  [ "${STANDIN_REBUILD:-0}" = 1 ]
}

build_base() {
  if exists "$base" && [ "${STANDIN_REBUILD:-0}" != 1 ]; then return 0; fi
  command -v debootstrap >/dev/null || { say "debootstrap is missing: apt-get install debootstrap"; exit 1; }
  local dir
  dir=$(mktemp -d /var/tmp/herald-standin-rootfs.XXXXXX)
  trap 'rm -rf "$dir"' RETURN
  say "debootstrap bookworm (minbase) into $dir"
  debootstrap --variant=minbase bookworm "$dir/rootfs" http://deb.debian.org/debian >"$dir/debootstrap.log" 2>&1 \
    || { tail -20 "$dir/debootstrap.log"; exit 1; }
  rm -rf "$dir/rootfs/var/cache/apt/archives/"*.deb "$dir/rootfs/var/lib/apt/lists/"*
  tar -C "$dir/rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' --change 'LABEL org.herald.standin=true' - "$base" >/dev/null
  say "imported $base"
}

# docker build of deploy/standins/KIND.Dockerfile, tagged NAME; extra context prepared by the caller.
build_kind() {
  local kind=$1 name=$2 context=$3
  say "building $name from $kind.Dockerfile"
  docker build -q -t "$name" -f "$here/$kind.Dockerfile" "$context" >/dev/null
}

build_rust() {
  local name=$1 ctx sysroot
  ctx=$(mktemp -d /var/tmp/herald-standin-rust.XXXXXX)
  trap 'rm -rf "$ctx"' RETURN
  sysroot=$(rustc --print sysroot)
  say "copying the Rust toolchain $(rustc --version | cut -d' ' -f2) from $sysroot"
  mkdir -p "$ctx/toolchain"
  cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/toolchain/"
  [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$ctx/toolchain/"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
  build_kind rust "$name" "$ctx"
}

# The names the files use.
from_images=$(awk 'toupper($1) == "FROM" {print $2}' "$repo/Dockerfile")
compose_images=$(awk '$1 == "image:" && $2 != "herald:local" {print $2}' "$repo/docker-compose.yml")

build_base
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
for name in $from_images $compose_images; do
  wanted "$name" || continue
  case "$name" in
    rust:*) build_rust "$name" ;;
    debian:*) build_kind debian-slim "$name" "$empty" ;;
    redis:*) build_kind redis "$name" "$empty" ;;
    nginx:*) build_kind nginx "$name" "$empty" ;;
    *) say "no stand-in recipe for $name"; exit 1 ;;
  esac
done
for name in $from_images $compose_images; do
  if is_standin "$name"; then kind="stand-in"; else kind="real"; fi
  say "$name: $kind, $(docker image inspect -f '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}')"
done
