"""A byte relay between TCP and a Unix socket, run inside the container tests' helper containers.

The backend container runs with no network at all (`--network none`: only a loopback
interface, no route anywhere), and Docker cannot publish a port of such a container. Two
relays carry the test's gRPC connections to it without giving it a route:

    test -> 127.0.0.1:P (published) -> relay `tcp` (bridge network)
         -> Unix socket in a shared directory
         -> relay `unix` (in the backend container's network namespace) -> 127.0.0.1:50051

    python container_relay.py unix SOCKET PORT [SOCKET PORT ...]
        listen on each SOCKET, connect to 127.0.0.1:PORT
    python container_relay.py tcp PORT SOCKET [PORT SOCKET ...]
        listen on 0.0.0.0:PORT, connect to SOCKET

One pair of relays carries several ports (the gRPC port, an adapter's, the OpenAI API's), one
socket each.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import Awaitable, Callable

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # pass a half-close on: HTTP/2 ends streams, not sockets


async def relay(
    connect: Connect, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
) -> None:
    try:
        upstream_reader, upstream_writer = await connect()
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pump(client_reader, upstream_writer), pump(upstream_reader, client_writer))
    for writer in (client_writer, upstream_writer):
        writer.close()


async def listen(mode: str, first: str, second: str) -> asyncio.Server:
    if mode == "unix":
        socket_path, port = first, int(second)
        connect = functools.partial(asyncio.open_connection, "127.0.0.1", port)
        return await asyncio.start_unix_server(functools.partial(relay, connect), path=socket_path)
    if mode == "tcp":
        port, socket_path = int(first), second
        connect = functools.partial(asyncio.open_unix_connection, socket_path)
        return await asyncio.start_server(functools.partial(relay, connect), "0.0.0.0", port)
    raise SystemExit(f"unknown mode {mode!r}")


async def main(mode: str, pairs: list[tuple[str, str]]) -> None:
    servers = [await listen(mode, first, second) for first, second in pairs]
    print(f"relay {mode} ready", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    main_args = sys.argv[1:]
    if len(main_args) < 3 or len(main_args) % 2 != 1:
        raise SystemExit(__doc__)
    mode, rest = main_args[0], main_args[1:]
    asyncio.run(main(mode, list(zip(rest[::2], rest[1::2], strict=True))))
