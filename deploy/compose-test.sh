#!/usr/bin/env bash
# End-to-end test of the compose deployment on a real Docker engine:
#   1. builds stand-ins for the pinned base images where none can be pulled (deploy/standins/build.sh),
#      builds the Herald image and brings the stack up (`docker-compose.yml` unchanged), waiting on the
#      health checks;
#   2. runs deploy/compose_check.py: 100 SSE clients through nginx, publishes through nginx and through
#      `redis-cli FCALL` in the Redis container, each Herald container restarted in turn, Redis SIGKILLed
#      and restarted, one node cut off Redis, scaling to 5 and back to 3, then `down` + `up` keeps history;
#   3. `down -v` at the end, whatever happened.
# Runs as its own compose project on a free loopback port, so it never touches a user's stack.
# Environment: COMPOSE (the compose command; default `docker compose` if present, else `docker-compose`).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
say() { echo "compose-test: $*" >&2; }

if ! docker info >/dev/null 2>&1; then
  say "NO DOCKER ENGINE ANSWERS: the compose deployment was NOT tested"
  exit 2
fi
if [ -z "${COMPOSE:-}" ]; then
  if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE="docker-compose"; fi
fi
project=herald-compose-test-$$
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export HERALD_BIND=127.0.0.1 HERALD_PORT=$port
compose() { $COMPOSE -p "$project" -f docker-compose.yml "$@"; }
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    say "failed; the last lines of each container's log:"
    compose logs --no-color --tail=30 2>&1 | tail -200 >&2 || true
  fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  exit $rc
}
trap cleanup EXIT

t0=$(date +%s)
deploy/standins/build.sh
say "base images ready in $(( $(date +%s) - t0 )) s"

t0=$(date +%s)
compose build --quiet herald
# Keep the newest build stage tagged (the next build's cache), drop the older ones this test left behind.
docker build -q --target build -t herald:build-cache . >/dev/null
docker image prune -f --filter label=org.herald.stage=build >/dev/null
say "herald image built in $(( $(date +%s) - t0 )) s: $(docker image inspect -f '{{.Size}}' herald:local \
  | awk '{printf "%.0f MB", $1/1e6}')"

t0=$(date +%s)
compose up -d --no-build
healthy=$(( $(date +%s) - t0 ))
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null
page=$(curl -fsS "http://127.0.0.1:$port/")
grep -q '<title>' <<<"$page" || { say "the demo page is not served through nginx"; exit 1; }
say "stack healthy ${healthy} s after up (redis, 3 nodes, nginx on 127.0.0.1:$port); demo page served"

python3 deploy/compose_check.py --port "$port" --project "$project" --compose "$COMPOSE"
say "passed"
