"""Mid-stream ``Configure`` on the engine's ``/v1/listen``: exactly one answer per Configure, in
the SDK's v1 shape, and the stream carries on unchanged after it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from deepgram import AsyncDeepgramClient
from deepgram.listen.v1.types import ListenV1Configure, ListenV1ConfigureFailure, ListenV1ConfigureSuccess

from streamproxy.engine.app import start_engine
from streamproxy.engine.live import configure_reply
from tests.helpers.gateway import sdk_env
from tests.helpers.marker import marker_audio

KEY = "cfg-key"


@pytest.fixture
async def port() -> AsyncIterator[int]:
    runner, p = await start_engine("127.0.0.1", 0, "marker", api_key=KEY)
    try:
        yield p
    finally:
        await runner.cleanup()


def test_configure_reply_shapes() -> None:
    ok = configure_reply({"type": "Configure", "features": {"numerals": True}}, "marker", "r")
    assert ListenV1ConfigureSuccess.model_validate(ok).type == "ConfigureSuccess"
    for msg, code in [
        ({"keyterms": ["x"]}, "CONFIGURE_KEYTERMS_NOT_SUPPORTED"),
        ({"keyterms": "x"}, "CONFIGURE_INVALID"),
        ({"features": {"numerals": "yes"}}, "CONFIGURE_INVALID"),
        ({"features": []}, "CONFIGURE_INVALID"),
    ]:
        fail = configure_reply({"type": "Configure", **msg}, "marker", "r")
        assert ListenV1ConfigureFailure.model_validate(fail).code == code


async def test_each_configure_answered_exactly_once_through_the_sdk(port: int) -> None:
    client = AsyncDeepgramClient(api_key=KEY, environment=sdk_env(port))
    async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate="16000") as sock:
        ws = sock._websocket
        await sock.send_configure(ListenV1Configure(type="Configure", features={"numerals": True}))
        await sock.send_media(marker_audio([("sil", 0, 50), ("word", 9, 100), ("sil", 0, 400)], 16000))
        await sock.send_configure(ListenV1Configure(type="Configure", keyterms=["deepgram"]))
        await ws.send(json.dumps({"type": "Configure", "features": {"smart_format": True}}))
        await sock.send_close_stream()
        msgs: list[dict[str, Any]] = []
        while True:
            try:
                msgs.append(json.loads(await ws.recv()))
            except websockets.ConnectionClosed:
                break
    kinds = [m["type"] for m in msgs]
    assert kinds.count("ConfigureSuccess") == 2 and kinds.count("ConfigureFailure") == 1
    answers = [m for m in msgs if m["type"].startswith("Configure")]
    assert [m["type"] for m in answers] == ["ConfigureSuccess", "ConfigureFailure", "ConfigureSuccess"]
    for m in answers:
        {"ConfigureSuccess": ListenV1ConfigureSuccess, "ConfigureFailure": ListenV1ConfigureFailure}[
            m["type"]
        ].model_validate(m)
    words = [w["word"] for m in msgs if m["type"] == "Results" for w in m["channel"]["alternatives"][0]["words"]]
    assert words == ["w9"] and kinds[-1] == "Metadata"
