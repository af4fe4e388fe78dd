"""``POST /v1/listen`` on the engine: a whole file in, Deepgram's prerecorded response out.

The gateway's job worker sends files here as it would to Deepgram; the engine takes PCM WAV or
raw linear16 bytes (it never fetches URLs, nor calls back: the gateway queues callbacks) and runs
them off the event loop, since a long file is seconds of CPU even for the marker kind.
"""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import orjson
from aiohttp import web
from multidict import MultiMapping

from streamproxy.deepgram.messages import prerecorded_response
from streamproxy.engine.dsp import downmix, resample, wav_to_pcm16
from streamproxy.engine.handshake import authorized, new_request_id, refusal
from streamproxy.engine.kinds import transcribe
from streamproxy.engine.options import (
    BadRequest,
    check_prerecorded_params,
    prerecorded_options,
    raw_audio_format,
    wants_utterances,
)
from streamproxy.engine.sphinx import SAMPLE_RATE as SPHINX_RATE
from streamproxy.engine.state import engine_state

__all__ = ["decode_body", "prerecorded_handler"]


def decode_body(body: bytes, query: MultiMapping[str]) -> tuple[np.ndarray, int]:
    """The request body as mono int16 and its rate: a PCM WAV, or raw linear16 described by the query."""
    if body[:4] == b"RIFF" and "encoding" not in query:
        samples, sr = wav_to_pcm16(body)
    else:
        sr, channels = raw_audio_format(query)
        samples = downmix(np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2"), channels).astype("<i2")
    if not 8000 <= sr <= 48000:
        raise BadRequest(f"sample rate must be between 8000 and 48000 Hz, got {sr}")
    return samples, sr


async def prerecorded_handler(request: web.Request) -> web.Response:
    """Check the query before reading the body, decode it to mono int16, transcribe off the loop."""
    st = engine_state(request)
    request_id = new_request_id()
    if not authorized(request, st.api_key):
        return refusal(401, "Invalid credentials.", request_id)
    q = request.query
    try:
        check_prerecorded_params(q)
        body = await request.read()
        if request.content_type == "application/json":
            raise BadRequest("the embedded engine does not fetch URLs; send the audio bytes")
        if not body:
            raise BadRequest("empty request body: send a WAV file or raw linear16 audio")
        samples, sr = decode_body(body, q)
    except BadRequest as exc:
        return refusal(400, str(exc), request_id)
    if st.kind == "pocketsphinx":
        samples = resample(samples, sr, SPHINX_RATE)
        sr = SPHINX_RATE
    opts = prerecorded_options(q, sr)
    loop = asyncio.get_running_loop()
    pcm = samples.astype("<i2").tobytes()
    finals, duration = await loop.run_in_executor(st.files, transcribe, st.kind, opts, pcm, st.whisper)
    resp = prerecorded_response(
        finals,
        request_id=request_id,
        duration=duration,
        channels=1,
        model_name=st.model_name,
        model_version=st.model_version,
        model_arch=st.kind,
        sha256=hashlib.sha256(body).hexdigest(),
        utterances=wants_utterances(q),
    )
    return web.Response(body=orjson.dumps(resp), content_type="application/json", headers={"dg-request-id": request_id})
