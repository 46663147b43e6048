"""``python -m gates.local.netfwd HOST PORT NS_PATH...``: a node's only way out.

Listens on ``HOST:PORT`` inside each network namespace given (a socket keeps
the namespace it was made in) and forwards every connection to ``HOST:PORT``
in the namespace it was started in (the host's).  The local gate runs one per
cluster with ``network = "namespace"``, for the control plane's address:
the agents' control URL, certificate and all, stays as it is.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import sys

_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listeners(host: str, port: int, ns_paths: list[str]) -> list[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    socks = []
    try:
        for path in ns_paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                _setns(fd)
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(128)
                s.setblocking(False)
                socks.append(s)
            finally:
                os.close(fd)
                _setns(home)
    finally:
        os.close(home)
    return socks


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.close()


async def serve(host: str, port: int, socks: list[socket.socket]) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(host, port)
        except OSError:
            w.close()
            return
        await asyncio.gather(_pipe(r, uw), _pipe(ur, w))
        w.close()
        uw.close()

    servers = [await asyncio.start_server(handle, sock=s) for s in socks]
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str]) -> None:
    host, port, paths = argv[0], int(argv[1]), argv[2:]
    socks = listeners(host, port, paths)
    print("ready", flush=True)
    asyncio.run(serve(host, port, socks))


if __name__ == "__main__":
    main(sys.argv[1:])
