"""Client authentication over real sockets: API keys (header and browser subprotocol), grant tokens
(Bearer and subprotocol) from ``POST /v1/auth/grant``, expiry, revocation, wrong credentials.

The official deepgram-sdk is the client where it can be (``api_key=`` sends ``Token``,
``access_token=`` sends ``Bearer``, ``auth.v1.tokens.grant`` calls the grant route); aiohttp is
used for the browser subprotocols, which the SDK does not speak.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from deepgram import AsyncDeepgramClient

from streamproxy.auth.keys import KeyStore
from streamproxy.serve import Running, reload
from tests.helpers.clients import SR, assert_deepgram_error, open_stream, refused, words_audio
from tests.helpers.gateway import engine, gateway, gateway_config, sdk_env, to_dict
from tests.helpers.marker import final_words

AUDIO = words_audio([31, 32, 33])
WORDS = ["w31", "w32", "w33"]


@contextlib.asynccontextmanager
async def gw_with_keys(tmp_path: Path, **overrides: Any) -> AsyncIterator[Running]:
    async with engine("marker") as eport:
        cfg = gateway_config([f"ws://127.0.0.1:{eport}"], **{"server.data_dir": str(tmp_path), **overrides})
        async with gateway(cfg) as gw:
            yield gw


def new_key(tmp_path: Path, name: str = "") -> tuple[str, str]:
    rec, secret = KeyStore(tmp_path / "keys.json").create(name)
    return rec.id, secret


async def sdk_stream(port: int, **client: Any) -> list[dict[str, Any]]:
    dg = AsyncDeepgramClient(environment=sdk_env(port), **client)
    got: list[dict[str, Any]] = []
    async with dg.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=str(SR)) as sock:

        async def reader() -> None:
            async for msg in sock:
                if not isinstance(msg, bytes):
                    got.append(to_dict(msg))

        task = asyncio.create_task(reader())
        await sock.send_media(AUDIO)
        await sock.send_close_stream()
        await asyncio.wait_for(task, 15)
    return got


async def grant(s: aiohttp.ClientSession, port: int, auth: str | None, body: Any = None) -> aiohttp.ClientResponse:
    headers = {"Authorization": auth} if auth else {}
    kw: dict[str, Any] = {"json": body} if body is not None else {}
    async with s.post(f"http://127.0.0.1:{port}/v1/auth/grant", headers=headers, **kw) as r:
        await r.read()
        return r


async def test_header_token_with_sdk(tmp_path: Path) -> None:
    _, key = new_key(tmp_path)
    async with gw_with_keys(tmp_path) as gw:
        got = await sdk_stream(gw.port, api_key=key)
    assert [w[0] for w in final_words(got)] == WORDS
    assert got[-1]["type"] == "Metadata"


async def test_wrong_credentials_get_401_in_deepgram_shape(tmp_path: Path) -> None:
    kid, key = new_key(tmp_path)
    async with gw_with_keys(tmp_path) as gw, aiohttp.ClientSession() as s:
        # the SDK with a wrong key cannot connect
        with pytest.raises(Exception) as ei:  # the SDK surfaces websockets' InvalidStatus
            await sdk_stream(gw.port, api_key="sp_000000000000_" + "0" * 48)
        assert "401" in str(ei.value)
        wrong_secret = f"sp_{kid}_" + "f" * 48  # right id, wrong secret: one scrypt, then no
        bad = [
            {},  # no credential at all
            {"Authorization": f"Token {wrong_secret}"},
            {"Authorization": "Token " + key[:-1]},  # truncated
            {"Authorization": "Token " + key + "x"},  # extended
            {"Authorization": "Token not-a-streamproxy-key"},
            {"Authorization": "Token "},
            {"Authorization": f"Basic {key}"},  # unknown scheme
            {"Authorization": f"Bearer {key}"},  # a key is not a token
            {"Authorization": "Bearer not.a.jwt"},
        ]
        for headers in bad:
            status, body, hdrs = await refused(s, gw.port, headers)
            assert status == 401, headers
            assert_deepgram_error(body, hdrs, "INVALID_AUTH")
        status, body, hdrs = await refused(s, gw.port, protocols=("token", wrong_secret))
        assert status == 401
        assert_deepgram_error(body, hdrs, "INVALID_AUTH")
        # plain HTTP routes under /v1/ too
        r = await grant(s, gw.port, f"Token {wrong_secret}")
        assert r.status == 401
        # the right key still works after all that
        st = await open_stream(s, gw.port, key=key)
        await st.send(AUDIO)
        await st.close_stream()
        assert st.words == WORDS


async def test_subprotocol_token_is_echoed(tmp_path: Path) -> None:
    _, key = new_key(tmp_path)
    async with gw_with_keys(tmp_path) as gw, aiohttp.ClientSession() as s:
        st = await open_stream(s, gw.port, protocols=("token", key))
        assert st.ws.protocol == "token"  # browsers drop a socket whose subprotocol is not echoed
        await st.send(AUDIO)
        await st.close_stream()
        assert st.words == WORDS and st.close_code == 1000


async def test_grant_token_as_bearer_with_sdk(tmp_path: Path) -> None:
    _, key = new_key(tmp_path)
    async with gw_with_keys(tmp_path) as gw:
        dg = AsyncDeepgramClient(api_key=key, environment=sdk_env(gw.port))
        granted = await dg.auth.v1.tokens.grant(ttl_seconds=120)
        assert granted.expires_in == 120 and granted.access_token.count(".") == 2
        default = await dg.auth.v1.tokens.grant()
        assert default.expires_in == 30  # auth.token_ttl_s
        claims = jwt.decode(granted.access_token, options={"verify_signature": False})
        assert 119 <= claims["exp"] - time.time() <= 121 and key not in granted.access_token
        got = await sdk_stream(gw.port, access_token=granted.access_token)
    assert [w[0] for w in final_words(got)] == WORDS


async def test_grant_token_as_subprotocol(tmp_path: Path) -> None:
    _, key = new_key(tmp_path)
    async with gw_with_keys(tmp_path) as gw, aiohttp.ClientSession() as s:
        r = await grant(s, gw.port, f"Token {key}", {"ttl_seconds": 60})
        token = (await r.json())["access_token"]
        st = await open_stream(s, gw.port, protocols=("bearer", token))
        assert st.ws.protocol == "bearer"
        await st.send(AUDIO)
        await st.close_stream()
        assert st.words == WORDS


async def test_expired_and_forged_tokens_refused(tmp_path: Path) -> None:
    kid, key = new_key(tmp_path)
    async with gw_with_keys(tmp_path) as gw, aiohttp.ClientSession() as s:
        r = await grant(s, gw.port, f"Token {key}", {"ttl_seconds": 1})
        short = (await r.json())["access_token"]
        r = await grant(s, gw.port, f"Token {key}", {"ttl_seconds": 60})
        good = (await r.json())["access_token"]
        secret = (tmp_path / "token_secret").read_bytes().strip()
        assert stat.S_IMODE(os.stat(tmp_path / "token_secret").st_mode) == 0o600
        now = int(time.time())
        base = {"iss": "streamproxy", "sub": kid, "iat": now, "exp": now + 60}
        forged = {
            "other secret": jwt.encode(base, "x" * 32, algorithm="HS256"),
            "alg none": jwt.encode(base, "", algorithm="none"),
            "no exp": jwt.encode({k: v for k, v in base.items() if k != "exp"}, secret, algorithm="HS256"),
            "unknown key id": jwt.encode({**base, "sub": "ffffffffffff"}, secret, algorithm="HS256"),
            "wrong issuer": jwt.encode({**base, "iss": "someone"}, secret, algorithm="HS256"),
            "tampered": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        }
        for what, token in forged.items():
            status, body, hdrs = await refused(s, gw.port, {"Authorization": f"Bearer {token}"})
            assert status == 401, what
            assert_deepgram_error(body, hdrs, "INVALID_AUTH")
        await asyncio.sleep(2.1)  # exp is rounded up to a whole second: at most 2 s for ttl 1
        hows: list[dict[str, Any]] = [
            {"headers": {"Authorization": f"Bearer {short}"}},
            {"protocols": ("bearer", short)},
        ]
        for how in hows:
            status, body, hdrs = await refused(s, gw.port, **how)
            assert status == 401
            assert_deepgram_error(body, hdrs, "INVALID_AUTH")
        st = await open_stream(s, gw.port, bearer=good)  # unexpired tokens still work
        await st.close_stream()
        assert st.close_code == 1000


async def test_revoked_key_and_its_tokens_refused(tmp_path: Path) -> None:
    kid, key = new_key(tmp_path)
    _, other = new_key(tmp_path)
    async with gw_with_keys(tmp_path) as gw, aiohttp.ClientSession() as s:
        token = (await (await grant(s, gw.port, f"Token {key}")).json())["access_token"]
        live = await open_stream(s, gw.port, key=key)
        await live.send(AUDIO[: len(AUDIO) // 2])
        assert KeyStore(tmp_path / "keys.json").revoke(kid) is not None
        reload(gw, gw.gateway.cfg)  # what SIGHUP does
        for headers in ({"Authorization": f"Token {key}"}, {"Authorization": f"Bearer {token}"}):
            status, body, hdrs = await refused(s, gw.port, headers)
            assert status == 401
            assert_deepgram_error(body, hdrs, "INVALID_AUTH")
        assert (await grant(s, gw.port, f"Token {key}")).status == 401
        # the other key is unaffected, and the live session opened before revocation completes
        st = await open_stream(s, gw.port, key=other)
        await st.close_stream()
        assert st.close_code == 1000
        await live.send(AUDIO[len(AUDIO) // 2 :])
        await live.close_stream()
        assert live.words == WORDS and live.close_code == 1000


async def test_grant_rejects_bad_input(tmp_path: Path) -> None:
    _, key = new_key(tmp_path)
    async with gw_with_keys(tmp_path) as gw, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{gw.port}/v1/auth/grant"
        auth = {"Authorization": f"Token {key}"}
        for body in (b'{"ttl_seconds": 0}', b'{"ttl_seconds": 3601}', b'{"ttl_seconds": "30"}',
                     b'{"ttl_seconds": true}', b'{"ttl_seconds": [1]}', b"{not json", b"[30]", b'"x"'):  # fmt: skip
            async with s.post(url, data=body, headers=auth) as r:
                assert r.status == 400, body
                assert_deepgram_error(await r.json(), dict(r.headers), "Bad Request")
        async with s.post(url, data=b'{"ttl_seconds": 3600}', headers=auth) as r:
            assert r.status == 200 and (await r.json())["expires_in"] == 3600  # the maximum is allowed
            token = (await r.json())["access_token"]
        async with s.post(url, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 403  # a token cannot mint tokens (no endless renewal)
            assert_deepgram_error(await r.json(), dict(r.headers), "INSUFFICIENT_PERMISSIONS")
        async with s.post(url) as r:
            assert r.status == 401
        async with s.get(url, headers=auth) as r:
            assert r.status == 405


async def test_anonymous_modes(tmp_path: Path) -> None:
    # allow_anonymous = false with no keys at all: nobody gets in, even on loopback
    async with gw_with_keys(tmp_path, **{"auth.allow_anonymous": False}) as gw, aiohttp.ClientSession() as s:
        status, _, _ = await refused(s, gw.port)
        assert status == 401
    # auto on loopback without keys: anonymous, whatever key an SDK sends
    async with gw_with_keys(tmp_path) as gw, aiohttp.ClientSession() as s:
        got = await sdk_stream(gw.port, api_key="anything")
        assert [w[0] for w in final_words(got)] == WORDS
        r = await grant(s, gw.port, None)
        assert r.status == 200  # the built-in page can ask for a token the same way
    # once a key exists, auto requires it
    _, key = new_key(tmp_path)
    async with gw_with_keys(tmp_path) as gw, aiohttp.ClientSession() as s:
        status, _, _ = await refused(s, gw.port)
        assert status == 401
    # allow_anonymous = true with keys: anonymous accepted, keys still accepted
    async with gw_with_keys(tmp_path, **{"auth.allow_anonymous": True}) as gw, aiohttp.ClientSession() as s:
        for k in (None, key):
            st = await open_stream(s, gw.port, key=k)
            await st.close_stream()
            assert st.close_code == 1000


async def test_keys_stored_hashed_and_probes_open(tmp_path: Path) -> None:
    kid, key = new_key(tmp_path, "web")
    raw = (tmp_path / "keys.json").read_text()
    assert kid in raw and key not in raw and key.split("_", 2)[2] not in raw
    assert stat.S_IMODE(os.stat(tmp_path / "keys.json").st_mode) == 0o600
    async with gw_with_keys(tmp_path) as gw, aiohttp.ClientSession() as s:
        for path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapes need no key
            async with s.get(f"http://127.0.0.1:{gw.port}{path}") as r:
                assert r.status == 200, path
        async with s.get(f"http://127.0.0.1:{gw.port}/v1/anything") as r:
            assert r.status == 401  # everything under /v1/ needs a credential, even unknown routes


async def test_wrong_secrets_for_a_known_key_id_are_throttled_per_id(tmp_path: Path, monkeypatch: Any) -> None:
    """A key id is not secret: 40 concurrent wrong secrets for one id used to cost 40 scrypt runs
    (two cores busy for as long as the flood lasts). Failed checks are throttled per id (a burst
    of 10, then 1 per second), so the flood costs a handful; other keys are unaffected, and the
    id's owner gets through once the flood stops."""
    import streamproxy.auth.authenticator as authenticator

    alice_id, alice = new_key(tmp_path, "alice")
    _bob_id, bob = new_key(tmp_path, "bob")
    runs: list[float] = []
    real = authenticator.derive

    def counting(*a: Any, **kw: Any) -> bytes:
        runs.append(time.monotonic())
        return real(*a, **kw)

    monkeypatch.setattr(authenticator, "derive", counting)
    async with gw_with_keys(tmp_path) as gw, aiohttp.ClientSession() as s:
        wrong = f"sp_{alice_id}_{'0' * 48}"
        flood = await asyncio.gather(*(grant(s, gw.port, f"Token {wrong}") for _ in range(40)))
        assert {r.status for r in flood} == {401}
        assert len(runs) <= 12, f"{len(runs)} scrypt runs for one key id's wrong secrets"
        before = len(runs)
        assert (await grant(s, gw.port, f"Token {bob}", {"ttl_seconds": 30})).status == 200  # another id
        assert len(runs) == before + 1
        await asyncio.sleep(1.1)
        assert (await grant(s, gw.port, f"Token {alice}", {"ttl_seconds": 30})).status == 200
