"""The reference deployment's files (``deploy/``) are the ones that work.

``deploy/gateway.toml`` loads with the config loader (regions, Redis Cluster, PostgreSQL), and
``deploy/nginx-streamproxy.conf`` — only its upstream addresses and listen port rewritten — runs in a
real nginx in front of two gateways: ``/readyz`` and Live sessions pass through it with the
WebSocket upgrade, and with one gateway stopped new sessions still get through (the dead instance
is skipped). Bad input: the reference nginx file with a broken directive fails ``nginx -t``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from streamproxy.config import load_config
from tests.helpers.clients import QUERY, Stream, words_audio
from tests.helpers.gateway import engine, gateway, gateway_config

ROOT = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"


def test_reference_gateway_config_loads_with_its_regions_cluster_and_postgresql() -> None:
    cfg = load_config(ROOT / "deploy" / "gateway.toml", env={})
    assert cfg.server.host == "0.0.0.0" and cfg.server.region == "eu-west-1"
    assert cfg.queue.redis_cluster and cfg.queue.redis_url.startswith("redis://")
    assert cfg.storage.url.startswith("postgresql://")
    regions = {u.name: u.region for u in cfg.upstreams}
    assert regions == {"local_eu": "eu-west-1", "deepgram": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _site(ports: list[int], listen: int) -> str:
    """The shipped site file with only its addresses changed."""
    text = (ROOT / "deploy" / "nginx-streamproxy.conf").read_text()
    servers = re.findall(r"^\s*server 10\.0\.1\.\d+:8080 .*;$", text, flags=re.M)
    assert len(servers) == 3, "the reference file lists three gateways"
    text = text.replace(servers[0], "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in ports))
    for extra in servers[1:]:
        text = text.replace(extra + "\n", "")
    assert "listen 8088;" in text
    return text.replace("listen 8088;", f"listen 127.0.0.1:{listen};")


def _main_conf(d: Path, site: str) -> Path:
    (d / "site.conf").write_text(site)
    temps = " ".join(f"{k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;" if os.geteuid() == 0 else ""
    conf = d / "nginx.conf"
    conf.write_text(
        f"{user}\nworker_processes 1;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n"
        f"events {{ worker_connections 256; }}\nhttp {{ access_log off; {temps} include {d}/site.conf; }}\n"
    )
    return conf


def _need_nginx() -> None:
    if not os.path.exists(NGINX):
        pytest.fail("nginx is required (Debian package nginx-light; .ci/run installs it)")


@contextlib.asynccontextmanager
async def _nginx(d: Path, site: str) -> AsyncIterator[None]:
    conf = _main_conf(d, site)
    proc = await asyncio.create_subprocess_exec(NGINX, "-p", str(d), "-c", str(conf), "-g", "daemon off;")
    try:
        for _ in range(100):
            if (d / "nginx.pid").exists():
                break
            await asyncio.sleep(0.05)
        yield
    finally:
        proc.terminate()
        await proc.wait()


async def _stream_words(s: aiohttp.ClientSession, port: int, ks: list[int]) -> list[str]:
    ws = await s.ws_connect(f"ws://127.0.0.1:{port}/v1/listen?{QUERY}")
    st = Stream(ws).start()
    await st.send(words_audio(ks))
    await st.close_stream()
    return st.words


async def test_reference_nginx_file_balances_sessions_and_skips_a_dead_gateway(tmp_path: Path) -> None:
    _need_nginx()
    async with engine("marker") as eport, contextlib.AsyncExitStack() as stack:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"server.data_dir": str(tmp_path)})
        a = await stack.enter_async_context(gateway(cfg))
        b = await stack.enter_async_context(gateway(cfg))
        lb = _free_port()
        d = tmp_path / "nginx"
        d.mkdir()
        async with _nginx(d, _site([a.port, b.port], lb)), aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{lb}/readyz") as r:
                assert r.status == 200
            got = [await _stream_words(s, lb, [11 + i, 21 + i]) for i in range(4)]
            assert got == [[f"w{11 + i}", f"w{21 + i}"] for i in range(4)]
            ends = [
                sum(
                    s_.value
                    for fam in gw.gateway.metrics.registry.collect()
                    for s_ in fam.samples
                    if s_.name == "streamproxy_sessions_total"
                )
                for gw in (a, b)
            ]
            assert ends == [2, 2]  # round robin over both
            await b.stop()
            got = [await _stream_words(s, lb, [31 + i]) for i in range(3)]
            assert got == [[f"w{31 + i}"] for i in range(3)]


def test_a_broken_reference_nginx_file_fails_nginx_t(tmp_path: Path) -> None:
    _need_nginx()
    ok = _main_conf(tmp_path, _site([_free_port()], _free_port()))
    good = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(ok)], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    (tmp_path / "site.conf").write_text(_site([1], 2).replace("proxy_http_version 1.1;", "proxy_http_version;"))
    bad = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(ok)], capture_output=True, text=True)
    assert bad.returncode != 0 and "proxy_http_version" in bad.stderr
