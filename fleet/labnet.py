"""The multi-box lab's network: delaying TCP proxies and a latency resolver.

Build machines' kernels may lack the `netem` qdisc, so distance is played in
user space: a `DelayProxy` forwards one TCP port to another and delays every
chunk by a fixed time per direction, the way a long link delays packets
without cutting its bandwidth.

`LabResolver` stands in for latency-based DNS: it probes every box through
its proxy (`GET /readyz` with the shared name as SNI and Host), keeps the
recent latencies, and answers A queries for the shared name with the
address of the healthy box that answered fastest.

`python -m fleet.labnet SPEC.json` runs the proxies and the resolver of one
spec until SIGTERM, SIGINT or the spec's `lifetime` in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from fleet import monitor

log = logging.getLogger(__name__)

CHUNK = 65536
DEFAULT_LIFETIME = 4 * 3600


def split_address(value: str) -> tuple[str, int]:
    """Split "HOST:PORT" into its parts; raise ValueError naming the value."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"invalid address {value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


# The delaying proxy


@dataclass
class DelayProxy:
    """Forward `listen` to `upstream`, delaying each direction by its own time."""

    name: str
    listen: tuple[str, int]
    upstream: tuple[str, int]
    up_ms: float = 0.0
    down_ms: float = 0.0
    connect_timeout: float = 5.0
    connections: int = 0
    upstream_down: bool = False
    _server: asyncio.Server | None = field(default=None, repr=False)
    _tasks: set[asyncio.Task] = field(default_factory=set, repr=False)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self.listen = self._server.sockets[0].getsockname()[:2]
        log.info(
            "event=proxy_started name=%s listen=%s:%d upstream=%s:%d up_ms=%g "
            "down_ms=%g", self.name, *self.listen, *self.upstream,
            self.up_ms, self.down_ms,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("event=proxy_stopped name=%s connections=%d", self.name,
                 self.connections)

    async def _accept(self, client_reader, client_writer) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._serve(client_reader, client_writer)
        except asyncio.CancelledError:
            # Only stop() cancels; asyncio's stream callback must not see it.
            client_writer.close()
        finally:
            self._tasks.discard(task)

    async def _serve(self, client_reader, client_writer) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), self.connect_timeout
            )
        except (OSError, TimeoutError) as error:
            # A dead box looks like a refused connection after the way there.
            if not self.upstream_down:
                log.info("event=proxy_upstream_down name=%s error=%s", self.name,
                         error or type(error).__name__)
            self.upstream_down = True
            await asyncio.sleep(self.up_ms / 1000)
            client_writer.close()
            return
        if self.upstream_down:
            log.info("event=proxy_upstream_up name=%s", self.name)
            self.upstream_down = False

        try:
            await asyncio.gather(
                _pipe(client_reader, upstream_writer, self.up_ms / 1000),
                _pipe(upstream_reader, client_writer, self.down_ms / 1000),
            )
        finally:
            for writer in (upstream_writer, client_writer):
                writer.close()


async def _pipe(reader, writer, delay: float) -> None:
    """Copy reader to writer, each chunk sent `delay` seconds after it came."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(CHUNK):
                queue.put_nowait((loop.time() + delay, data))
        except OSError:
            pass
        queue.put_nowait((loop.time() + delay, b""))

    async def send() -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    receiver = asyncio.create_task(receive())
    try:
        await send()
    except OSError:
        pass
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)


# The resolver


@dataclass
class Candidate:
    """One box the resolver may answer with: its address and recent probes."""

    name: str
    address: str
    port: int
    samples: deque = field(default_factory=lambda: deque(maxlen=5))
    failures: int = 0
    successes: int = 0
    healthy: bool = False
    last_problem: str | None = None

    @property
    def latency_ms(self) -> float | None:
        """Median of the recent latencies, steadier than a single probe."""
        return statistics.median(self.samples) if self.samples else None


class LabResolver(asyncio.DatagramProtocol):
    """Answer A queries for the shared name with the fastest healthy box.

    A box turns unhealthy after `fall` failed probes in a row and healthy
    again after `rise` good ones. When no box is healthy, every box is
    answered in latency order, as Route53 does when all health checks fail.
    """

    def __init__(self, domain: str, candidates: list[Candidate],
                 interval: float = 1.0, timeout: float = 2.0,
                 fall: int = 2, rise: int = 2, ttl: int = 1) -> None:
        self.domain = domain.rstrip(".").lower()
        self.candidates = candidates
        self.interval = interval
        self.timeout = timeout
        self.fall = fall
        self.rise = rise
        self.ttl = ttl
        self.transport: asyncio.DatagramTransport | None = None
        self._prober: asyncio.Task | None = None

    async def start(self, listen: tuple[str, int]) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=listen
        )
        self._prober = asyncio.create_task(self._probe_forever())
        bound = self.transport.get_extra_info("sockname")[:2]
        log.info("event=resolver_started listen=%s:%d domain=%s boxes=%d",
                 *bound, self.domain, len(self.candidates))
        return bound

    async def stop(self) -> None:
        if self._prober:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        if self.transport:
            self.transport.close()
        log.info("event=resolver_stopped domain=%s", self.domain)

    # Probing

    async def probe_once(self) -> None:
        await asyncio.gather(*(self._probe(c) for c in self.candidates))

    async def _probe_forever(self) -> None:
        while True:
            started = time.monotonic()
            await self.probe_once()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def _probe(self, candidate: Candidate) -> None:
        target = monitor.Target(candidate.name, candidate.address, candidate.port,
                                self.domain)
        result = monitor.Result(candidate.name, f"{candidate.address}:"
                                f"{candidate.port}", checked_at="")
        try:
            await asyncio.wait_for(
                monitor.check_readyz(target, result, self.timeout), self.timeout + 1
            )
        except TimeoutError:
            result.problems.append("probe timed out")

        if result.problems:
            candidate.failures += 1
            candidate.successes = 0
            candidate.last_problem = result.problems[0]
        else:
            candidate.successes += 1
            candidate.failures = 0
            candidate.last_problem = None
            candidate.samples.append(result.latency_ms)
        self._update_health(candidate)

    def _update_health(self, candidate: Candidate) -> None:
        was = candidate.healthy
        if candidate.healthy and candidate.failures >= self.fall:
            candidate.healthy = False
        elif not candidate.healthy and candidate.successes >= self.rise:
            candidate.healthy = True
        if was != candidate.healthy:
            log.info(
                "event=box_%s box=%s address=%s latency_ms=%s problem=%s",
                "healthy" if candidate.healthy else "unhealthy", candidate.name,
                candidate.address, candidate.latency_ms, candidate.last_problem,
            )

    # Answering

    def ranked(self) -> list[Candidate]:
        """Return the boxes to answer with, fastest first."""
        pool = [c for c in self.candidates if c.healthy] or list(self.candidates)

        def key(candidate: Candidate) -> float:
            latency = candidate.latency_ms
            return latency if latency is not None else float("inf")

        return sorted(pool, key=key)

    def answer(self, data: bytes) -> bytes | None:
        """Build the reply to one DNS query, or None for an unparsable packet."""
        try:
            request = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 (dnslib raises several types)
            log.info("event=dns_unparsable bytes=%d", len(data))
            return None
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name != self.domain:
            reply.header.rcode = RCODE.REFUSED
            return reply.pack()
        if request.q.qtype in (QTYPE.A, QTYPE.ANY):
            best = self.ranked()[:1]
            for candidate in best:
                reply.add_answer(
                    RR(request.q.qname, QTYPE.A, rdata=A(candidate.address),
                       ttl=self.ttl)
                )
        return reply.pack()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def status(self) -> list[dict[str, Any]]:
        return [
            {"name": c.name, "address": c.address, "healthy": c.healthy,
             "latency_ms": c.latency_ms, "problem": c.last_problem}
            for c in self.candidates
        ]


def query(server: tuple[str, int], name: str, timeout: float = 2.0) -> list[str]:
    """Ask a DNS server over UDP for A records; return the addresses."""
    packet = DNSRecord.question(name, "A").send(server[0], server[1], timeout=timeout)
    reply = DNSRecord.parse(packet)
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


# Building the multi-box lab's spec


def read_net_config(path: Path) -> dict[str, Any]:
    """Read lab/labnet.toml; raise ValueError naming the file on bad input."""
    import tomllib

    try:
        config = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read lab network file {path}: {error}") from error
    for key in ("dns", "front_port", "primary_db_port", "boxes"):
        if key not in config:
            raise ValueError(f"{path}: missing key {key!r}; see lab/labnet.toml")
    return config


def lab_spec(
    fleet: Any,
    net: dict[str, Any],
    bridge: str,
    primary_address: str | None,
) -> dict[str, Any]:
    """Lay out the proxies and the resolver for the boxes of a fleet.

    Each box gets a front proxy on its own loopback address that delays the
    client path. Each box other than the primary also gets a link on the
    docker bridge address `bridge`, which delays its path to the primary's
    database at `primary_address` (the primary container's address).
    """
    proxies = []
    for region in fleet.regions.values():
        box = net["boxes"].get(region.name)
        if box is None:
            raise ValueError(
                f"lab network file has no [boxes.{region.name}] table; add one "
                f"with front and client_ms"
            )
        proxies.append({
            "name": f"{region.name}-front",
            "listen": f"{box['front']}:{net['front_port']}",
            "upstream": f"127.0.0.1:{region.https_port}",
            "up_ms": box.get("client_ms", 0),
            "down_ms": box.get("client_ms", 0),
            "serve": True,
            "region": region.name,
        })
        if region.is_primary or primary_address is None:
            continue
        proxies.append({
            "name": f"{region.name}-to-primary",
            "listen": f"{bridge}:{box['primary_link']}",
            "upstream": f"{primary_address}:{net['primary_db_port']}",
            "up_ms": box.get("primary_ms", 0),
            "down_ms": box.get("primary_ms", 0),
            "serve": False,
            "region": region.name,
        })
    return {
        "domain": fleet.project.domain,
        "dns": net["dns"],
        "lifetime": float(net.get("lifetime_hours", 8)) * 3600,
        "proxies": proxies,
    }


def front_endpoints(spec: dict[str, Any]) -> dict[str, str]:
    """Map each region to its front proxy, in the monitor's endpoints format."""
    return {p["region"]: p["listen"] for p in spec["proxies"] if p["serve"]}


# Running a spec


async def serve(spec: dict[str, Any], status_path: Path | None = None) -> None:
    """Run the proxies and the resolver of a spec until cancelled or timed out.

    Spec keys: `domain`, `dns` ("HOST:PORT"), `lifetime` (seconds), and
    `proxies`, each with `name`, `listen`, `upstream`, `up_ms`, `down_ms`
    and `serve` (true for a box the resolver may answer with).
    """
    proxies = [
        DelayProxy(
            name=entry["name"],
            listen=split_address(entry["listen"]),
            upstream=split_address(entry["upstream"]),
            up_ms=float(entry.get("up_ms", 0)),
            down_ms=float(entry.get("down_ms", 0)),
        )
        for entry in spec["proxies"]
    ]
    for proxy in proxies:
        await proxy.start()

    candidates = [
        Candidate(entry.get("region", entry["name"]),
                  *split_address(entry["listen"]))
        for entry in spec["proxies"]
        if entry.get("serve")
    ]
    resolver = LabResolver(spec["domain"], candidates)
    await resolver.start(split_address(spec["dns"]))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    deadline = loop.time() + float(spec.get("lifetime", DEFAULT_LIFETIME))
    try:
        while not stop.is_set() and loop.time() < deadline:
            if status_path:
                temporary = status_path.with_suffix(".tmp")
                temporary.write_text(json.dumps(resolver.status(), indent=1))
                temporary.replace(status_path)
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
    finally:
        await resolver.stop()
        for proxy in proxies:
            await proxy.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fleet.labnet",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="JSON spec of proxies and resolver")
    parser.add_argument("--status", type=Path, help="write box health here each s")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    spec = json.loads(options.spec.read_text())
    asyncio.run(serve(spec, options.status))


if __name__ == "__main__":
    main()
