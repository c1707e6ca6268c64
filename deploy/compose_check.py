#!/usr/bin/env python3
"""The scenario of deploy/compose-test.sh, against a running `docker compose` stack (Python 3.11,
standard library only).

100 SSE subscribers through nginx, publishes through nginx and through `redis-cli FCALL` in the Redis
container, while the stack is disturbed: each Herald container restarted in turn, Redis SIGKILLed and
started again, one node cut off Redis (`docker network disconnect`) and reconnected, the service scaled
to 5 nodes and back to 3; and Herald as a Mercure hub: updates published and resumed from their own ids
through nginx, over several nodes. Every subscriber reconnects the way a browser does (`Last-Event-ID`) and must
end with every acknowledged message exactly once, in id order. Prints its figures; exits 1 on any loss,
duplicate, reordering or broken expectation.
"""

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

TOPICS = ("compose.a", "compose.b")
SUBSCRIBERS = 100


def log(msg):
    print(f"compose-check: [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Failure(Exception):
    pass


class Stack:
    """The compose project, driven through the docker CLI."""

    def __init__(self, compose, project):
        self.compose = compose
        self.project = project

    def run(self, *args, check=True, timeout=120):
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise Failure(f"{' '.join(args)} failed: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout.strip()

    def compose_run(self, *args, **kw):
        return self.run(*self.compose, "-p", self.project, *args, **kw)

    def containers(self, service):
        ids = self.run("docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                       "--filter", f"label=com.docker.compose.service={service}")
        names = [self.run("docker", "inspect", "-f", "{{.Name}}", i).lstrip("/") for i in ids.split()]
        return sorted(names, key=lambda n: int(n.rsplit("_", 1)[-1].rsplit("-", 1)[-1]))

    def ip(self, container, network="front"):
        fmt = "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}"
        for pair in self.run("docker", "inspect", "-f", fmt, container).split():
            name, _, addr = pair.partition("=")
            if name.endswith("_" + network) and addr:
                return addr
        raise Failure(f"{container} has no address on the {network} network")

    def health(self, container):
        return self.run("docker", "inspect", "-f", "{{.State.Health.Status}}", container, check=False)

    def wait_healthy(self, containers, limit=90):
        start = time.monotonic()
        while time.monotonic() - start < limit:
            if all(self.health(c) == "healthy" for c in containers):
                return time.monotonic() - start
            time.sleep(0.5)
        raise Failure(f"not healthy within {limit} s: " + ", ".join(f"{c}={self.health(c)}" for c in containers))

    def network(self, suffix):
        return f"{self.project}_{suffix}"

    def redis_cli(self, *args, timeout=10):
        return self.compose_run("exec", "-T", "redis", "redis-cli", *args, check=False, timeout=timeout)


def http(method, url, body=None, headers=None, timeout=10):
    """(status, body text); (0, reason) when no HTTP answer came."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, urllib.error.URLError) as e:
        return 0, str(e)


def node_connections(stack, container):
    status, text = http("GET", f"http://{stack.ip(container)}:8080/metrics", timeout=5)
    if status != 200:
        return None
    for line in text.splitlines():
        if line.startswith("herald_connections "):
            return int(float(line.split()[1]))
    return None


class Subscriber:
    """One EventSource-like client: reconnects after any end with the last id it saw."""

    def __init__(self, host, port, n, topics):
        self.host, self.port, self.n, self.topics = host, port, n, topics
        self.events = []  # (own id, topic, data, the stream's id: a composite of its positions)
        self.last_id = None
        self.connects = 0
        self.refused = 0
        self.opened = asyncio.Event()
        self.stopping = False

    async def run(self):
        while not self.stopping:
            try:
                await self.session()
            except (OSError, asyncio.IncompleteReadError, ValueError):
                pass
            if not self.stopping:
                await asyncio.sleep(0.1 + random.random() * 0.2)

    async def session(self):
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            # The envelope names each event's topic and own id; the `id:` line is the stream's position.
            query = "&".join(f"topic={t}" for t in self.topics) + "&envelope=json"
            head = f"GET /events?{query} HTTP/1.1\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n"
            if self.last_id:
                head += f"Last-Event-ID: {self.last_id}\r\n"
            writer.write((head + "\r\n").encode())
            await writer.drain()
            status = (await reader.readline()).decode()
            chunked = False
            while True:
                line = (await reader.readline()).decode().strip()
                if not line:
                    break
                if line.lower().startswith("transfer-encoding:") and "chunked" in line.lower():
                    chunked = True
            if " 200 " not in status:
                self.refused += 1
                return
            self.connects += 1
            self.opened.set()
            await self.read_events(reader, chunked)
        finally:
            writer.close()

    async def read_events(self, reader, chunked):
        buf = b""
        ev_id, data = None, []
        while not self.stopping:
            if chunked:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                chunk = await reader.readexactly(size + 2)
                buf += chunk[:-2]
            else:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode()
                if line == "":
                    if data:
                        if ev_id is not None:
                            self.last_id = ev_id
                        env = json.loads("\n".join(data))
                        self.events.append((env.get("id"), env.get("topic"), env.get("data"), ev_id))
                    ev_id, data = None, []
                elif line.startswith("id:"):
                    ev_id = line[3:].lstrip(" ")
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))


def id_key(event_id):
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def fnv1a(topics):
    h = 0x811C9DC5
    for t in sorted(topics):
        for b in t.encode() + b"\n":
            h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def positions(composite, topics):
    """A multi-topic stream's id: its position in each topic (names sorted; base 36), tag checked."""
    tag, *pos = composite.split(".")
    if int(tag, 36) != fnv1a(topics) or len(pos) != len(topics):
        raise Failure(f"{composite!r} is not a composite id of {topics}")
    return {t: tuple(int(x, 36) for x in p.split("-")) for t, p in zip(sorted(topics), pos)}


class Publisher:
    """Publishes through nginx until stopped; each message is retried with its Idempotency-Key until it is
    acknowledged, so what was stored is exactly what was acknowledged."""

    def __init__(self, base):
        self.base = base
        self.acked = []  # (id, topic, data)
        self.failures = 0
        self.stopping = False
        self.last_ack_at = 0.0

    def publish_one(self, n):
        topic = TOPICS[n % len(TOPICS)]
        data = f"http-{n}"
        key = f"compose-http-{n}-{random.getrandbits(48)}"
        while True:
            status, body = http("POST", f"{self.base}/topics/{topic}", data.encode(),
                                {"Idempotency-Key": key, "Content-Type": "text/plain"}, timeout=10)
            if status == 200:
                self.acked.append((json.loads(body)["id"], topic, data))
                self.last_ack_at = time.monotonic()
                return
            self.failures += 1
            time.sleep(0.05)

    def run(self, rate):
        n = 0
        while not self.stopping:
            self.publish_one(n)
            n += 1
            time.sleep(1 / rate)


class CliPublisher:
    """Publishes through `redis-cli FCALL herald_publish` in the Redis container, retried with an
    idempotency key until Redis answers an id."""

    def __init__(self, stack):
        self.stack = stack
        self.acked = []
        self.stopping = False

    def run(self, every):
        n = 0
        while not self.stopping:
            topic = TOPICS[n % len(TOPICS)]
            data = f"cli-{n}"
            key = f"compose-cli-{n}-{random.getrandbits(48)}"
            while not self.stopping:
                out = self.stack.redis_cli("FCALL", "herald_publish", "1", f"herald:{{{topic}}}", data, "", key)
                if out and "-" in out and out.replace("-", "").isdigit():
                    self.acked.append((out, topic, data))
                    break
                time.sleep(0.2)
            n += 1
            time.sleep(every)


async def in_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


async def mercure_ids(host, port, query, want, timeout=15):
    """The first `want` event ids of a Mercure stream through nginx (a GET of /.well-known/mercure)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET /.well-known/mercure?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        status = (await asyncio.wait_for(reader.readline(), timeout)).decode()
        if " 200 " not in status:
            raise Failure(f"a Mercure subscription through nginx was answered {status.strip()}")
        ids = []
        while len(ids) < want:
            line = (await asyncio.wait_for(reader.readline(), timeout)).decode().rstrip("\r\n")
            if line.startswith("id: "):
                ids.append(line[4:])
        return ids
    finally:
        writer.close()


async def mercure_check(base, host, port):
    """Herald as a multi-node Mercure hub: updates published through nginx (so over several nodes) with
    their own ids, and resumed from one of those ids through nginx again, on whichever node it lands."""
    topic = "https://example.com/compose/books/1"
    enc = urllib.parse.quote(topic, safe="")
    run = random.getrandbits(32)
    ids = [f"urn:compose:{run}:{n}" for n in range(4)]
    for n, update_id in enumerate(ids):
        form = urllib.parse.urlencode({"topic": topic, "data": f"book v{n}", "id": update_id}).encode()
        status, body = await in_thread(http, "POST", f"{base}/.well-known/mercure", form,
                                       {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 200 or body != update_id:
            raise Failure(f"a Mercure publish through nginx answered {status} {body!r}, not 200 {update_id!r}")
    for attempt in range(3):
        got = await mercure_ids(host, port, f"topic={enc}&lastEventID={urllib.parse.quote(ids[0])}", 3)
        if got != ids[1:]:
            raise Failure(f"a Mercure resume from {ids[0]} through nginx got {got}, not {ids[1:]}")
    log(f"Mercure: 4 updates published through nginx with their own ids; 3 resumes from the first "
        f"through nginx each got exactly the 3 after it")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--compose", default="docker-compose")
    ap.add_argument("--rate", type=float, default=40.0, help="HTTP publishes per second")
    args = ap.parse_args()
    stack = Stack(args.compose.split(), args.project)
    base = f"http://127.0.0.1:{args.port}"
    figures = {"restarts": 0}

    subs = [Subscriber("127.0.0.1", args.port, i, TOPICS) for i in range(SUBSCRIBERS)]
    tasks = [asyncio.create_task(s.run()) for s in subs]
    await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in subs)), 60)
    nodes = stack.containers("herald")
    spread = {c: node_connections(stack, c) for c in nodes}
    log(f"{SUBSCRIBERS} subscribers open through nginx; streams per node: {spread}")
    if sum(1 for v in spread.values() if v) < 2:
        raise Failure(f"nginx sent every subscriber to one node: {spread}")

    await mercure_check(base, "127.0.0.1", args.port)

    publisher = Publisher(base)
    cli = CliPublisher(stack)
    pub_task = asyncio.create_task(in_thread(publisher.run, args.rate))
    cli_task = asyncio.create_task(in_thread(cli.run, 0.5))
    await asyncio.sleep(3)

    # 3. Each Herald container restarted in turn (SIGTERM, then start) while publishing.
    for c in nodes:
        t0 = time.monotonic()
        await in_thread(stack.run, "docker", "restart", "-t", "15", c)
        healthy = await in_thread(stack.wait_healthy, [c])
        figures["restarts"] += 1
        log(f"restarted {c}: back to healthy in {time.monotonic() - t0:.1f} s ({healthy:.1f} s after start)")
        await asyncio.sleep(2)

    # 4. Redis SIGKILLed and started again: nothing acknowledged is lost (AOF, fsync always).
    redis = stack.containers("redis")[0]
    acked_before_kill = len(publisher.acked)
    await in_thread(stack.run, "docker", "kill", "-s", "KILL", redis)
    await asyncio.sleep(1)
    await in_thread(stack.run, "docker", "start", redis)
    while (await in_thread(stack.redis_cli, "PING")) != "PONG":
        await asyncio.sleep(0.05)
    answered = time.monotonic()
    while publisher.last_ack_at < answered:
        if time.monotonic() - answered > 30:
            raise Failure("no publish was acknowledged within 30 s of Redis answering again")
        await asyncio.sleep(0.02)
    back = publisher.last_ack_at - answered
    figures["publish_back_after_redis_s"] = round(back, 3)
    log(f"Redis killed (SIGKILL) and started: publishes acknowledged again {back:.3f} s after it answered "
        f"({acked_before_kill} acked before the kill)")
    if back > 1.0:
        raise Failure(f"publishing came back {back:.3f} s after Redis answered (more than 1 s)")
    await in_thread(stack.wait_healthy, nodes)
    await asyncio.sleep(2)

    # 5. One node cut off Redis: /readyz 503, nginx sends it no new subscriber, it ends its streams after
    # the grace, and its clients get everything from the others.
    cut = nodes[0]
    cut_ip = stack.ip(cut)
    await in_thread(stack.run, "docker", "network", "disconnect", stack.network("store"), cut)
    t0 = time.monotonic()
    while (await in_thread(http, "GET", f"http://{cut_ip}:8080/readyz"))[0] != 503:
        if time.monotonic() - t0 > 20:
            raise Failure(f"{cut}'s /readyz stayed 200 for 20 s after it was cut off Redis")
        await asyncio.sleep(0.1)
    log(f"cut {cut} off Redis: /readyz 503 after {time.monotonic() - t0:.1f} s")
    before = node_connections(stack, cut)
    late = [Subscriber("127.0.0.1", args.port, 1000 + i, TOPICS) for i in range(20)]
    tasks += [asyncio.create_task(s.run()) for s in late]
    await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in late)), 60)
    after = node_connections(stack, cut)
    log(f"20 new subscribers while {cut} is cut off: its streams {before} -> {after}")
    if after is None or before is None or after > before:
        raise Failure(f"nginx sent new subscribers to {cut} while it could not reach Redis ({before} -> {after})")
    subs += late
    # Past redis.link_lost_grace_ms (2 s) the cut node ends its streams, and its clients resume on the
    # others (every subscriber's exactness is checked at the end).
    t_end = time.monotonic()
    while (left := node_connections(stack, cut)) != 0:
        if time.monotonic() - t_end > 10:
            raise Failure(f"{cut} still held {left} streams 10 s after it was cut off Redis")
        await asyncio.sleep(0.1)
    log(f"{cut} ended its streams {time.monotonic() - t0:.1f} s after it was cut off Redis")
    await asyncio.sleep(1)
    await in_thread(stack.run, "docker", "network", "connect", stack.network("store"), cut)
    await in_thread(stack.wait_healthy, [cut])
    log(f"reconnected {cut} to Redis")
    await asyncio.sleep(2)

    # 6. Scaled to 5 nodes and back to 3 while subscribed.
    await in_thread(stack.compose_run, "up", "-d", "--no-recreate", "--no-build", "--scale", "herald=5")
    scaled = stack.containers("herald")
    if len(scaled) != 5:
        raise Failure(f"scaling to 5 gave {len(scaled)} nodes")
    await in_thread(stack.wait_healthy, scaled)
    await asyncio.sleep(6)  # nginx looks the service up again every 5 s
    extra = [Subscriber("127.0.0.1", args.port, 2000 + i, TOPICS) for i in range(30)]
    tasks += [asyncio.create_task(s.run()) for s in extra]
    await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in extra)), 60)
    subs += extra
    new_nodes = [c for c in scaled if c not in nodes]
    on_new = {c: node_connections(stack, c) for c in new_nodes}
    log(f"scaled to 5: streams on the new nodes {on_new}")
    if not any(on_new.values()):
        raise Failure(f"nginx sent no new subscriber to the added nodes {new_nodes}")
    await in_thread(stack.compose_run, "up", "-d", "--no-recreate", "--no-build", "--scale", "herald=3")
    if len(stack.containers("herald")) != 3:
        raise Failure("scaling back to 3 did not leave 3 nodes")
    log("scaled back to 3")
    await asyncio.sleep(3)

    # The end: stop publishing, let every subscriber catch up, compare.
    publisher.stopping = cli.stopping = True
    await pub_task
    await cli_task
    acked = sorted(publisher.acked + cli.acked, key=lambda e: id_key(e[0]))
    # Ids are ordered per topic: everything is checked per topic.
    acked_of = {t: [(i, d) for i, tt, d in acked if tt == t] for t in TOPICS}
    newest = [a[-1][0] for a in acked_of.values() if a]
    deadline = time.monotonic() + 60
    caught_up = lambda s: all(n in {e[0] for e in s.events} for n in newest)  # noqa: E731
    while time.monotonic() < deadline and not all(caught_up(s) for s in subs):
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)
    for s in subs:
        s.stopping = True
    for t in tasks:
        t.cancel()

    lost = dup = disorder = 0
    data_of = {(i, t): d for i, t, d in acked}
    for k, s in enumerate(subs):
        unexpected = [(i, t) for i, t, _, _ in s.events if (i, t) not in data_of]
        if unexpected:
            raise Failure(f"subscriber {s.n} got ids nobody was acknowledged: {unexpected[:5]}")
        if any(d != data_of[(i, t)] for i, t, d, _ in s.events):
            raise Failure(f"subscriber {s.n} got data that differs from what was published")
        where = [positions(c, TOPICS) for _, _, _, c in s.events]
        for (i, t, _, c), p in zip(s.events, where):
            if p[t] != id_key(i):
                raise Failure(f"subscriber {s.n}: the stream id {c} does not hold {t}'s event {i}")
        # A position never goes back, and each event moves one forward.
        disorder += sum(1 for a, b in zip(where, where[1:]) if any(b[t] < a[t] for t in TOPICS) or a == b)
        for topic in TOPICS:
            ids = [i for i, t, _, _ in s.events if t == topic]
            # The first 100 were open before the first publish; later ones owe each topic's events after
            # the position their first event gave for it (that event itself included).
            start = None if k < SUBSCRIBERS or not where else where[0][topic]
            first_id = s.events[0][0] if s.events else None
            want = [i for i, _ in acked_of[topic] if start is None or id_key(i) > start or i == first_id]
            seen = set()
            for i in ids:
                dup += i in seen
                seen.add(i)
            lost += sum(1 for i in want if i not in seen)
            disorder += sum(1 for a, b in zip(ids, ids[1:]) if id_key(a) >= id_key(b))
    delivered = sum(len(s.events) for s in subs)
    figures.update(acked=len(acked), acked_http=len(publisher.acked), acked_redis_cli=len(cli.acked),
                   subscribers=len(subs), delivered=delivered, lost=lost, duplicated=dup,
                   out_of_order=disorder, publish_retries=publisher.failures,
                   reconnects=sum(s.connects - 1 for s in subs))
    log("figures " + json.dumps(figures))
    if lost or dup or disorder:
        raise Failure(f"{lost} lost, {dup} duplicated, {disorder} out of order")

    # `docker compose down` then `up` keeps the history (AOF on the named volume).
    await in_thread(stack.compose_run, "down", timeout=180)
    await in_thread(stack.compose_run, "up", "-d", "--no-build", timeout=300)
    await in_thread(stack.wait_healthy, stack.containers("herald"))
    for topic in TOPICS:
        want = [i for i, t, _ in acked if t == topic][-100:]
        after = f"{id_key(want[0])[0] - 1}-0"  # `after` is exclusive: start just before the first one
        status, body = http("GET", f"{base}/topics/{topic}/history?after={after}&limit=500")
        if status != 200:
            raise Failure(f"history after down/up answered {status}: {body}")
        have = {e["id"] for e in json.loads(body)["events"]}
        missing = [i for i in want if i not in have]
        if missing:
            raise Failure(f"after down/up, {len(missing)} of the last 100 events of {topic} are gone")
    log("down then up: history kept")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Failure as e:
        log(f"FAILED: {e}")
        sys.exit(1)
    log("passed")
