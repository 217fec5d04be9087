"""A byte relay between TCP and a Unix socket, run inside the container tests' helper containers.

The backend container runs with no network at all (`--network none`: only a loopback
interface, no route anywhere), and Docker cannot publish a port of such a container. Two
relays carry the test's gRPC connections to it without giving it a route:

    test -> 127.0.0.1:P (published) -> relay `tcp` (bridge network)
         -> Unix socket in a shared directory
         -> relay `unix` (in the backend container's network namespace) -> 127.0.0.1:50051

    python container_relay.py unix SOCKET PORT   listen on SOCKET, connect to 127.0.0.1:PORT
    python container_relay.py tcp PORT SOCKET    listen on 0.0.0.0:PORT, connect to SOCKET
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


async def main(mode: str, first: str, second: str) -> None:
    if mode == "unix":
        socket_path, port = first, int(second)
        connect = functools.partial(asyncio.open_connection, "127.0.0.1", port)
        server = await asyncio.start_unix_server(
            functools.partial(relay, connect), path=socket_path
        )
    elif mode == "tcp":
        port, socket_path = int(first), second
        connect = functools.partial(asyncio.open_unix_connection, socket_path)
        server = await asyncio.start_server(functools.partial(relay, connect), "0.0.0.0", port)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(f"relay {mode} ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    main_args = sys.argv[1:]
    if len(main_args) != 3:
        raise SystemExit(__doc__)
    asyncio.run(main(*main_args))
