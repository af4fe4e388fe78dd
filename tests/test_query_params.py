"""Hostile query values: numbers in other scripts, repeated single-valued keys, Deepgram's
``endpointing=true``, through the shared checks and through a real gateway with the official SDK."""

from __future__ import annotations

import aiohttp
import pytest
from deepgram import AsyncDeepgramClient
from multidict import MultiDict

from streamproxy.deepgram.params import bounded_int
from streamproxy.edge.params import ParamError, parse_params
from tests.helpers.gateway import engine, gateway, gateway_config, sdk_env
from tests.helpers.jobs import marker_wav

ARABIC_INDIC = "\u0661\u0666\u0660\u0660\u0660"  # 16000 in Arabic-Indic digits
FULL_WIDTH = "\uff11\uff16\uff10\uff10\uff10"  # 16000 in full-width digits
NOT_NUMBERS = [ARABIC_INDIC, "16_000", FULL_WIDTH, " 16000", "16000\n", "+16000", "0x3e80", "1" * 5000]


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_unicode_underscore_and_padded_digits_are_not_numbers(value: str) -> None:
    """Python's int() accepts Arabic-Indic and full-width digits, underscores and whitespace;
    Deepgram's parameters are ASCII decimal integers, so each of these is refused."""
    with pytest.raises(ParamError, match="must be an integer"):
        bounded_int("sample_rate", value, 2000, 192_000, error=ParamError)
    with pytest.raises(ParamError):
        parse_params(MultiDict([("encoding", "linear16"), ("sample_rate", value)]))
    assert bounded_int("sample_rate", "16000", 2000, 192_000) == 16000


def test_repeated_single_valued_keys_are_refused_and_lists_allowed() -> None:
    """``model=a&model=b`` would be forwarded twice and read differently by each side; refused.
    Deepgram's list parameters (keyterm, keywords, tag, extra, redact, replace, search) repeat."""
    for key, a, b in (("model", "nova-3", "nova-2"), ("sample_rate", "16000", "8000"), ("punctuate", "true", "false")):
        with pytest.raises(ParamError, match=f"{key} is given more than once"):
            parse_params(MultiDict([("encoding", "linear16"), ("sample_rate", "16000"), (key, a), (key, b)][-4:]))
    ok = parse_params(MultiDict([("keyterm", "a"), ("keyterm", "b"), ("tag", "x"), ("tag", "y")]))
    assert ok.upstream_query == "keyterm=a&keyterm=b&tag=x&tag=y"


def test_endpointing_true_is_accepted_as_deepgram_does() -> None:
    """Deepgram takes endpointing=true|false|<ms>."""
    for value in ("true", "TRUE", "false", "300", "0"):
        assert "endpointing=" in parse_params(MultiDict([("endpointing", value)])).upstream_query
    with pytest.raises(ParamError):
        parse_params(MultiDict([("endpointing", "soon")]))


async def test_repeated_model_and_unicode_rate_refused_endpointing_true_served_through_the_gateway() -> None:
    """The same checks at the gateway's edge: live (the SDK's socket) and prerecorded (HTTP)."""
    async with engine("marker") as eport, gateway(gateway_config([f"ws://127.0.0.1:{eport}"])) as gw:
        base = f"http://127.0.0.1:{gw.port}"
        async with aiohttp.ClientSession() as http:
            for query in ("model=a&model=b", "encoding=linear16&sample_rate=%D9%A1%D9%A6%D9%A0%D9%A0%D9%A0"):
                async with http.post(f"{base}/v1/listen?{query}", data=marker_wav([5])) as r:
                    assert r.status == 400, (query, await r.text())
                async with http.get(f"{base}/v1/listen?{query}", headers={"Upgrade": "websocket"}) as r:
                    assert r.status == 400, (query, await r.text())
        client = AsyncDeepgramClient(api_key="anything", environment=sdk_env(gw.port))
        async with client.listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate="16000", endpointing="true"
        ) as sock:
            await sock.send_close_stream()
            got = [m async for m in sock]
        assert got and getattr(got[-1], "type", None) == "Metadata"
