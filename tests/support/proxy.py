"""A TCP proxy for fault tests: passes, refuses or stalls the traffic to a real server.

It runs an asyncio loop on a thread of its own. `stall()` models a server that is there and
silent: new connections are accepted and nothing is forwarded either way, and connections already
open stop forwarding too. `refuse()` closes every connection and refuses new ones. `pass_()`
forwards again; connections that were stalled are closed (their in-flight requests were never
answered, so the client must see an error rather than a late answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PASS, STALL, REFUSE = "pass", "stall", "refuse"


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = PASS
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._stalled: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)

    # Control, from the test's thread

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def pass_(self) -> None:
        self._call(self._set(PASS))

    def stall(self) -> None:
        self._call(self._set(STALL))

    def refuse(self) -> None:
        self._call(self._set(REFUSE))

    @property
    def url_host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    # The loop

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen())
        self._ready.set()
        self._loop.run_forever()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()

    async def _set(self, mode: str) -> None:
        previous, self.mode = self.mode, mode
        if mode == REFUSE or (previous == STALL and mode == PASS):
            self._close_all()

    def _close_all(self) -> None:
        for client, upstream in list(self._conns):
            client.close()
            if upstream is not None:
                upstream.close()
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == REFUSE:
            writer.close()
            return
        entry: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._conns.add(entry)
        try:
            while self.mode == STALL:  # accepted, silent: hold until a mode change
                await asyncio.sleep(0.05)
                if entry not in self._conns:
                    return
            if entry not in self._conns:
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._conns.discard(entry)
            writer.close()
            return
        self._conns.discard(entry)
        entry = (writer, up_writer)
        self._conns.add(entry)
        await asyncio.gather(
            self._pipe(reader, up_writer, entry), self._pipe(up_reader, writer, entry)
        )
        self._conns.discard(entry)
        writer.close()
        up_writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None],
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while entry in self._conns:
                data = await reader.read(65536)
                if not data:
                    break
                while self.mode == STALL and entry in self._conns:
                    await asyncio.sleep(0.05)  # held, not forwarded
                if entry not in self._conns:
                    break
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()


@contextmanager
def fault_proxy(host: str, port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(host, port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
