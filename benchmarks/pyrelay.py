"""A minimal Python WebSocket relay: the floor for any relay built on the proxy's own libraries.

aiohttp server on the client side (as streamproxy), one upstream connection per client with either
``websockets`` (as streamproxy) or aiohttp's client; frames are forwarded as they come, nothing
else (no session core, no buffer, no metrics). Comparing its CPU per session-second with
streamproxy's tells how much of the proxy's cost is its own logic and how much the Python
WebSocket stack (``load.py --ab none/pyrelay-websockets/pyrelay-aiohttp``).

    python -m benchmarks.pyrelay --port 8090 --target ws://127.0.0.1:8081 --upstream-lib websockets
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import aiohttp
import uvloop
from aiohttp import WSMsgType, web
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def make_app(target: str, lib: str) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def via_websockets(ws: web.WebSocketResponse, url: str) -> None:
        async with connect(url, compression=None, max_size=None) as up:

            async def down() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for m in up:
                        await (ws.send_str(m) if isinstance(m, str) else ws.send_bytes(m))
                await ws.close()

            task = asyncio.create_task(down())
            async for msg in ws:
                if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                    await up.send(msg.data)
            await asyncio.wait_for(task, 15)

    async def via_aiohttp(ws: web.WebSocketResponse, url: str) -> None:
        if "s" not in session:
            session["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        async with session["s"].ws_connect(url, compress=0, max_msg_size=0, autoping=True) as up:

            async def down() -> None:
                async for m in up:
                    if m.type == WSMsgType.TEXT:
                        await ws.send_str(m.data)
                    elif m.type == WSMsgType.BINARY:
                        await ws.send_bytes(m.data)
                await ws.close()

            task = asyncio.create_task(down())
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await up.send_bytes(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    await up.send_str(msg.data)
            await asyncio.wait_for(task, 15)

    async def listen(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0, autoping=True)
        await ws.prepare(request)
        url = f"{target}/v1/listen?{request.query_string}"
        await (via_websockets if lib == "websockets" else via_aiohttp)(ws, url)
        return ws

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_get("/v1/listen", listen)
    app.router.add_get("/readyz", ok)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--target", required=True, help="engine base URL, ws://host:port")
    ap.add_argument("--upstream-lib", choices=("websockets", "aiohttp"), default="websockets")
    a = ap.parse_args()
    uvloop.install()
    web.run_app(make_app(a.target, a.upstream_lib), host="127.0.0.1", port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
