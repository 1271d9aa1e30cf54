"""ClusterIP → pod forwarding for the pods the sandbox really runs: kube-proxy's job, small.

In a cluster, kube-proxy makes a Service's ClusterIP:port reach one of its ready
endpoints.  The sandbox's Service range is on loopback (see ``sandbox.cluster``), so
the API server calling istiod's webhooks at ``istiod.istio-system.svc:443`` dials a
127.x ClusterIP on this machine.  This module listens on exactly those ClusterIP:port
pairs and relays each TCP connection, bytes untouched (TLS passes through), to a ready
backend's host port; with no ready backend the connection is closed at once, as
kube-proxy rejects it.  Only Services whose backends are processes the sandbox runs
get a listener; everything else stays unanswered as before.

One asyncio loop in a daemon thread serves every listener; ``set_routes`` (called from
any thread) opens, retargets and closes listeners to match the wanted table.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable

Address = tuple[str, int]


class ServiceProxy:
    """Listeners on ClusterIP:port, each relaying to the current ready backends."""

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log
        self.loop = asyncio.new_event_loop()
        self.routes: dict[Address, list[Address]] = {}
        self.servers: dict[Address, asyncio.base_events.Server] = {}
        self._turn = itertools.count()
        threading.Thread(target=self.loop.run_forever, daemon=True,
                         name="service proxy").start()

    def set_routes(self, routes: dict[Address, list[Address]]) -> None:
        """Make the listeners match ``routes`` (front → ready backends); blocks until done."""
        asyncio.run_coroutine_threadsafe(self._apply(routes), self.loop).result(timeout=30)

    def listening(self) -> set[Address]:
        return set(self.servers)

    async def _apply(self, routes: dict[Address, list[Address]]) -> None:
        self.routes = {k: list(v) for k, v in routes.items()}
        for front in [f for f in self.servers if f not in routes]:
            server = self.servers.pop(front)
            server.close()
            self.log(f"service proxy: closed {front[0]}:{front[1]}")
        for front in routes:
            if front in self.servers:
                continue
            try:
                self.servers[front] = await asyncio.start_server(
                    lambda r, w, f=front: self._relay(f, r, w), host=front[0], port=front[1],
                    reuse_address=True)
                self.log(f"service proxy: listening on {front[0]}:{front[1]}")
            except OSError as e:  # someone else holds it; the next sync tries again
                self.log(f"service proxy: cannot listen on {front[0]}:{front[1]}: {e}")

    async def _relay(self, front: Address, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        backends = self.routes.get(front) or []
        if not backends:
            writer.close()
            return
        host, port = backends[next(self._turn) % len(backends)]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    if dst.can_write_eof():
                        dst.write_eof()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        for w in (writer, up_writer):
            with contextlib.suppress(OSError):
                w.close()
