"""The real CLI as a subprocess: ``streamproxy serve`` on a fresh checkout with no key and no config,
``streamproxy stream``, and the embedded pocketsphinx engine recognising synthesized speech."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from streamproxy.engine.supervisor import free_port
from tests.helpers.engine import wer
from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.marker import final_words, marker_audio

SENTENCE = "the quick brown fox jumps over the lazy dog near the river bank"


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROXY_") and k != "DEEPGRAM_API_KEY"}
    env["HOME"] = str(tmp)  # data dir under a fresh home: nothing configured
    env.pop("XDG_DATA_HOME", None)
    return env


def speech_wav(tmp: Path, text: str = SENTENCE) -> Path:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.fail("espeak-ng and sox are required (installed by .ci/run)")
    raw, wav = tmp / "speech22k.wav", tmp / "speech16k.wav"
    subprocess.run(["espeak-ng", "-s", "140", "-w", str(raw), text], check=True)
    # pad with silence so the last word is endpointed
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav), "pad", "0.3", "0.8"], check=True)
    return wav


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``streamproxy serve --port P`` exactly as the README says, with nothing configured."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamproxy", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    import urllib.request

    while True:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"serve exited early with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("serve did not become ready within 90 s")
        time.sleep(0.2)
    try:
        yield port, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_fresh_serve_transcribes_speech_end_to_end(served: tuple[int, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """No key, no config: the default embedded engine recognises synthesized speech via the CLI streamer."""
    port, _proc = served
    wav = speech_wav(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "streamproxy", "stream", str(wav), "--url", f"ws://127.0.0.1:{port}", "--fast"],
        capture_output=True,
        timeout=120,
        env=_clean_env(tmp_path),
    )
    assert out.returncode == 0, out.stderr.decode()
    text = " ".join(re.sub(r"^\[\s*[\d.]+\]\s*", "", line) for line in out.stdout.decode().splitlines())
    hyp = re.sub(r"[^a-z' ]", " ", text.lower())
    # The default engine (pocketsphinx unless a whisper model is installed) must find real words.
    # pocketsphinx on espeak-ng voices measured ~65-70 % WER here; whisper ~0-25 %.
    found = [w for w in {"quick", "brown", "fox", "jumps", "lazy", "dog", "river", "bank"} if w in hyp.split()]
    assert len(found) >= 2, f"transcript {hyp!r}"
    assert wer(SENTENCE, " ".join(hyp.split())) <= 0.9


def test_serve_reports_bad_config_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[session]\nframe_ms = 'abc'\n")
    out = subprocess.run(
        [sys.executable, "-m", "streamproxy", "serve", "--config", str(bad)],
        capture_output=True,
        timeout=30,
        env=_clean_env(tmp_path),
    )
    assert out.returncode == 2
    assert b"session.frame_ms" in out.stderr
    env = _clean_env(tmp_path) | {"STREAMPROXY_SERVER_PROT": "9000"}
    out = subprocess.run([sys.executable, "-m", "streamproxy", "serve"], capture_output=True, timeout=30, env=env)
    assert out.returncode == 2 and b"STREAMPROXY_SERVER_PROT" in out.stderr


async def test_pocketsphinx_through_the_proxy(tmp_path: Path) -> None:
    """Synthesized speech streamed in 100 ms chunks through the gateway to the pocketsphinx engine."""
    pcm = speech_wav(tmp_path).read_bytes()[44:]
    async with engine("pocketsphinx") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/listen?encoding=linear16&sample_rate=16000"
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            for i in range(0, len(pcm), 3200):
                await ws.send_bytes(pcm[i : i + 3200])
            await ws.send_str('{"type":"CloseStream"}')
            msgs = [orjson.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
    words = final_words(msgs)
    hyp = " ".join(w for w, _, _ in words)
    # pocketsphinx hears espeak-ng poorly (58-92 % WER seen on this sentence, varying with load and
    # chunking): the bound says "recognised, not noise"; the keywords below say it is this sentence.
    assert wer(SENTENCE, hyp) < 1.0, hyp
    assert sum(w in hyp.split() for w in ("quick", "brown", "fox", "jumps", "lazy", "dog", "river", "bank")) >= 2
    starts = [s for _, s, _ in words]
    assert starts == sorted(starts) and all(0 <= s <= e <= len(pcm) / 32000 + 0.01 for _, s, e in words)


async def test_idle_client_keeps_its_session_through_keepalive() -> None:
    """25 s without audio: the engine would close an idle stream after 10 s (NET-0001); the gateway's
    KeepAlive keeps the very same upstream connection alive (no reconnect), and words still flow.
    The gateway's own client idle timeout (NET-0001 toward the client, tested in test_peers) is
    turned off here: this is about the upstream side."""
    audio = marker_audio([("word", 7, 200), ("sil", 0, 400)], 16000)
    async with (
        engine("marker", idle_timeout_s=10.0) as eport,
        gateway(
            gateway_config(
                [f"ws://127.0.0.1:{eport}"], **{"session.keepalive_s": 4.0, "session.client_idle_timeout_s": 0}
            )
        ) as gw,
    ):
        url = f"ws://127.0.0.1:{gw.port}/v1/listen?encoding=linear16&sample_rate=16000"
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:

            async def read() -> list[dict]:  # reading also answers the gateway's pings
                return [orjson.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]

            reader = asyncio.create_task(read())
            await ws.send_bytes(audio)
            await asyncio.sleep(25)
            await ws.send_bytes(audio)
            await ws.send_str('{"type":"CloseStream"}')
            msgs = await asyncio.wait_for(reader, 20)
        reg = gw.gateway.metrics.registry
        assert reg.get_sample_value("streamproxy_upstream_connects_total", {"upstream": "u0", "region": ""}) == 1
        reconnects = [s for f in reg.collect() if f.name == "streamproxy_upstream_reconnects" for s in f.samples]
        assert sum(s.value for s in reconnects if s.name.endswith("_total")) == 0
    assert [w for w, _, _ in final_words(msgs)] == ["w7", "w7"]
    assert not any(x.get("type") == "Error" for x in msgs)
