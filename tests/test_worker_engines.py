"""`streamproxy worker` without upstreams starts its own embedded engine: it must be configured from
every ``[engine]`` key exactly as `serve`'s (the worker once dropped max_streams, model_package,
max_concurrent_decodes, max_decode_wait_s and interim_every_s)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.helpers.jobs import queue_sections, redis_server, start_worker, unique_prefix, write_config


async def test_worker_engines_honour_every_engine_option(tmp_path: Path) -> None:
    async with redis_server(tmp_path / "redis") as rs:
        sections = queue_sections(rs.url, unique_prefix(), None)
        sections["engine"] = {"kind": "marker", "processes": 1, "max_streams": 1, "interim_every_s": 0.7}
        sections["server"] = {"data_dir": str(tmp_path / "data")}
        w = await start_worker(write_config(tmp_path / "w.toml", sections))
        try:
            [started] = [x for x in w.lines if x.get("event") == "engine_started"]
            [port] = started["ports"]
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    health = await r.json()
                assert health["kind"] == "marker"
                assert health.get("max_streams") == 1  # the flag reached the worker's engine
                # ... and it is enforced: a second concurrent stream is refused with 429.
                url = f"ws://127.0.0.1:{port}/v1/listen?encoding=linear16&sample_rate=16000"
                async with http.ws_connect(url):
                    with pytest.raises(aiohttp.WSServerHandshakeError) as ei:
                        await http.ws_connect(url)
                    assert ei.value.status == 429
        finally:
            await w.stop()
