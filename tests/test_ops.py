"""Operations, with ``streamproxy`` as a real subprocess: the systemd notify protocol (READY,
WATCHDOG, STATUS, STOPPING) on a datagram socket we own, graceful drain on SIGTERM, SIGHUP reload
of keys and limits without dropping sessions, the non-loopback refusal, the ``keys`` CLI, and
logs that never contain a key, a token or audio."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers.clients import SR, assert_deepgram_error, open_stream, refused, words_audio
from tests.helpers.marker import marker_audio
from tests.helpers.serve_proc import NotifySocket, cli, serve_proc
from tests.test_systemd_units import UNITS, parse_unit

KEY_RE = re.compile(r"^sp_([0-9a-f]{12})_([0-9a-f]{48})$")


def create_key(data_dir: Path, name: str = "") -> tuple[str, str]:
    r = cli(data_dir, "keys", "create", *(["--name", name] if name else []))
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    m = KEY_RE.match(key)
    assert m, r.stdout
    return m.group(1), key


def timeout_stop_s() -> float:
    return float(parse_unit(UNITS / "streamproxy.service")["Service"]["TimeoutStopSec"][0])


# ------------------------------------------------------------------ keys CLI


def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    kid, key = create_key(tmp_path, "web app")
    r = cli(tmp_path, "keys", "create")
    assert r.returncode == 0 and "shown only once" in r.stderr
    kid2 = KEY_RE.match(r.stdout.strip()).group(1)  # type: ignore[union-attr]
    store = tmp_path / "keys.json"
    raw = store.read_text()
    assert key not in raw and key.split("_")[2] not in raw  # only salted hashes are stored
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600

    listing = cli(tmp_path, "keys", "list")
    assert listing.returncode == 0 and key not in listing.stdout + listing.stderr
    lines = {ln.split()[0]: ln for ln in listing.stdout.splitlines()[1:]}
    assert "active" in lines[kid] and "web app" in lines[kid] and kid2 in lines

    assert cli(tmp_path, "keys", "revoke", kid).returncode == 0
    rows = {k["id"]: k for k in json.loads(cli(tmp_path, "keys", "list", "--json").stdout)}
    assert rows[kid]["revoked"] and rows[kid2]["revoked"] is None
    assert set(rows[kid]) == {"id", "name", "created", "revoked"}  # no hash, no salt

    # bad input: an unknown id, a missing id, a missing action, a corrupt key file
    bad = cli(tmp_path, "keys", "revoke", "nosuchkey")
    assert bad.returncode == 1 and "nosuchkey" in bad.stderr
    assert cli(tmp_path, "keys", "revoke").returncode == 2
    assert cli(tmp_path, "keys").returncode == 2
    store.write_text("{not json")
    corrupt = cli(tmp_path, "keys", "list")
    assert corrupt.returncode == 2 and "auth.keys_file" in corrupt.stderr
    helptext = cli(tmp_path, "keys", "--help").stdout
    assert all(w in helptext for w in ("create", "list", "revoke"))


# ------------------------------------------------------------------ exposure


def test_non_loopback_without_keys_refuses_to_start(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = cli(tmp_path, "serve", "--host", "0.0.0.0", timeout=20)
    assert r.returncode != 0 and time.monotonic() - t0 < 20
    assert "auth.allow_anonymous" in r.stderr and "0.0.0.0" in r.stderr
    # a revoked key does not count
    kid, _ = create_key(tmp_path)
    assert cli(tmp_path, "keys", "revoke", kid).returncode == 0
    r = cli(tmp_path, "serve", "--host", "0.0.0.0", timeout=20)
    assert r.returncode != 0 and "auth.allow_anonymous" in r.stderr
    # a corrupt key file is named, not silently treated as "no keys"
    (tmp_path / "keys.json").write_text("[]")
    r = cli(tmp_path, "serve", "--host", "0.0.0.0", timeout=20)
    assert r.returncode != 0 and "auth.keys_file" in r.stderr
    (tmp_path / "keys.json").unlink()

    # with a key it starts; so it does with an explicit allowance
    create_key(tmp_path)
    for env in ({}, {"STREAMPROXY_AUTH_ALLOW_ANONYMOUS": "true"}):
        if env:
            (tmp_path / "keys.json").unlink()
        with serve_proc(tmp_path, "--host", "0.0.0.0", env=env) as sp:
            listening = sp.wait_event("listening")
            assert listening["host"] == "0.0.0.0" and listening["anonymous"] is bool(env)
            sp.signal(signal.SIGTERM)
            assert sp.wait(15) == 0


# ------------------------------------------------------------------ systemd notify


def test_sd_notify_ready_watchdog_status_stopping(tmp_path: Path) -> None:
    _, key = create_key(tmp_path)
    ns = NotifySocket(tmp_path / "n.sock")
    try:
        env = {"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "400000"}
        with serve_proc(tmp_path, env=env, wait_ready=False) as sp:
            ready = ns.recv_until(lambda m: "READY=1" in m, 15)
            assert "STATUS=listening" in ready
            port = int(sp.wait_event("listening")["port"])
            t0 = time.monotonic()
            for _ in range(3):  # every WATCHDOG_USEC / 2 = 0.2 s, from the event loop
                ns.recv_until(lambda m: "WATCHDOG=1" in m, 2)
            assert time.monotonic() - t0 < 1.5

            async def with_session() -> str:
                async with aiohttp.ClientSession() as s:
                    st = await open_stream(s, port, key=key)
                    msg = await asyncio.to_thread(ns.recv_until, lambda m: "STATUS=1 sessions" in m, 3)
                    await st.close_stream()
                    return msg

            assert "WATCHDOG=1" in asyncio.run(with_session())
            ns.recv_until(lambda m: "STATUS=0 sessions" in m, 3)
            sp.signal(signal.SIGTERM)
            stopping = ns.recv_until(lambda m: "STOPPING=1" in m, 5)
            assert "STATUS=draining" in stopping
            assert sp.wait(15) == 0
    finally:
        ns.close()


# ------------------------------------------------------------------ drain


def test_sigterm_drains_live_session(tmp_path: Path) -> None:
    _, key = create_key(tmp_path)
    ns = NotifySocket(tmp_path / "n.sock")
    drain_s = 1.5
    env = {
        "NOTIFY_SOCKET": str(ns.path),
        "WATCHDOG_USEC": "400000",
        "STREAMPROXY_SESSION_DRAIN_TIMEOUT_S": str(drain_s),
    }
    try:
        with serve_proc(tmp_path, env=env) as sp:
            asyncio.run(_drain_scenario(sp, ns, key, drain_s))
    finally:
        ns.close()


async def _drain_scenario(sp: Any, ns: NotifySocket, key: str, drain_s: float) -> None:
    base = f"http://127.0.0.1:{sp.port}"
    async with aiohttp.ClientSession() as s:
        live = await open_stream(s, sp.port, key=key)
        await live.send(words_audio([61, 62]) + marker_audio([("word", 63, 200)], SR))
        for _ in range(100):
            if live.words == ["w61", "w62"]:
                break
            await asyncio.sleep(0.05)
        assert live.words == ["w61", "w62"]

        t0 = time.monotonic()
        sp.signal(signal.SIGTERM)
        await asyncio.to_thread(ns.recv_until, lambda m: "STOPPING=1" in m, 5)
        async with s.get(f"{base}/readyz") as r:
            assert r.status == 503 and (await r.json())["draining"] is True  # at once
        assert time.monotonic() - t0 < drain_s  # well before the drain timeout
        status, body, hdrs = await refused(s, sp.port, {"Authorization": f"Token {key}"})
        assert status == 503
        assert_deepgram_error(body, hdrs, "SERVICE_UNAVAILABLE")

        # the live session keeps working during the drain window ...
        await live.send(marker_audio([("sil", 0, 350), ("word", 64, 200)], SR))
        # ... and at its end is finalised (w64 never got its trailing silence) and closed with 1012
        await live.finish(timeout=drain_s + 10)
        closed_after = time.monotonic() - t0
    assert live.words == ["w61", "w62", "w63", "w64"]
    assert live.msgs[-1]["type"] == "Metadata"
    assert live.close_code == 1012
    assert drain_s - 0.2 <= closed_after < drain_s + 5
    code = await asyncio.to_thread(sp.wait, timeout_stop_s())
    assert code == 0
    assert time.monotonic() - t0 < timeout_stop_s()
    end = [r for r in sp.records() if r.get("event") == "session_end"]
    assert len(end) == 1 and end[0]["outcome"] == "drained" and end[0]["close_code"] == 1012


# ------------------------------------------------------------------ SIGHUP


def test_sighup_reloads_keys_and_limits_without_dropping_sessions(tmp_path: Path) -> None:
    _, key_a = create_key(tmp_path, "a")
    conf = tmp_path / "streamproxy.toml"
    conf.write_text("[limits]\nrequests_per_minute = 0\n")
    with serve_proc(tmp_path, "--config", str(conf)) as sp:
        asyncio.run(_sighup_scenario(sp, tmp_path, conf, key_a))


async def _sighup(sp: Any, n: int) -> dict[str, Any]:
    """Send SIGHUP and wait for the n-th reload outcome line."""
    sp.signal(signal.SIGHUP)
    for _ in range(200):
        done = [r for r in sp.records() if r.get("event") in ("reloaded", "reload_failed")]
        if len(done) >= n:
            return done[n - 1]
        await asyncio.sleep(0.025)
    raise AssertionError("no reload line")


async def _sighup_scenario(sp: Any, data_dir: Path, conf: Path, key_a: str) -> None:
    grant = f"http://127.0.0.1:{sp.port}/v1/auth/grant"
    async with aiohttp.ClientSession() as s:
        live = await open_stream(s, sp.port, key=key_a)
        await live.send(words_audio([71]))

        kid_b, key_b = await asyncio.to_thread(create_key, data_dir, "b")
        status, _, _ = await refused(s, sp.port, {"Authorization": f"Token {key_b}"})
        assert status == 401  # not loaded yet
        await asyncio.to_thread(conf.write_text, "[limits]\nrequests_per_minute = 1\n")
        assert (await _sighup(sp, 1))["event"] == "reloaded"
        st = await open_stream(s, sp.port, key=key_b)  # the new key works
        await st.close_stream()
        assert st.close_code == 1000
        for expect in (200, 429):  # and the new limit applies
            async with s.post(grant, headers={"Authorization": f"Token {key_b}"}) as r:
                assert r.status == expect

        # a broken config on SIGHUP is reported and changes nothing
        await asyncio.to_thread(conf.write_text, "[limits]\nrequests_per_minute = -1\n")
        failed = await _sighup(sp, 2)
        assert failed["event"] == "reload_failed" and "limits.requests_per_minute" in failed["error"]
        async with s.post(grant, headers={"Authorization": f"Token {key_b}"}) as r:
            assert r.status == 429

        # revoking the key of the live session: new connections refused, the live one goes on
        r2 = await asyncio.to_thread(cli, data_dir, "keys", "revoke", key_a.split("_")[1])
        assert r2.returncode == 0
        await asyncio.to_thread(conf.write_text, "[limits]\n")
        assert (await _sighup(sp, 3))["event"] == "reloaded"
        status, _, _ = await refused(s, sp.port, {"Authorization": f"Token {key_a}"})
        assert status == 401
        await live.send(words_audio([72]))
        await live.close_stream()
    assert live.words == ["w71", "w72"] and live.close_code == 1000
    assert kid_b


# ------------------------------------------------------------------ logs


MARK = 0x5A5A  # a marker word whose int16 samples are the bytes "ZZ"


def test_logs_carry_request_ids_and_no_secrets_or_audio(tmp_path: Path) -> None:
    _, key = create_key(tmp_path)
    wrong = "sp_0123456789ab_" + "e" * 48
    with serve_proc(tmp_path) as sp:
        tokens = asyncio.run(_traffic(sp.port, key, wrong))
        sp.signal(signal.SIGTERM)
        assert sp.wait(15) == 0
        out = sp.output
        records = sp.records()

    assert out.strip()
    for line in out.splitlines():
        json.loads(line)  # every line is one JSON object (journald-friendly)
    secrets = [key, key.split("_")[2], wrong.split("_")[2], *tokens, *(t.split(".")[2] for t in tokens)]
    for secret in secrets:
        assert secret not in out
    audio = b"ZZ" * 64
    for pattern in ("ZZZZZZZZ", base64.b64encode(audio).decode()[:16], audio.hex()[:16], "\\x5a\\x5a"):
        assert pattern.lower() not in out.lower(), pattern
    assert f"w{MARK}" not in out  # nor the transcript

    ends = [r for r in records if r.get("event") == "session_end"]
    assert len(ends) == 3
    request_scoped = {"session_end", "auth_failed", "token_granted", "session_refused"}
    seen = [r for r in records if r.get("event") in request_scoped]
    assert {r["event"] for r in seen} >= {"session_end", "auth_failed", "token_granted"}
    for r in seen:
        assert re.fullmatch(r"[0-9a-f-]{36}", r.get("request_id", "")), r
    # a session's lines share its request id, which is also the session id
    assert all(r["request_id"] == r["session_id"] for r in ends)


async def _traffic(port: int, key: str, wrong: str) -> list[str]:
    audio = marker_audio([("sil", 0, 100), ("word", MARK, 400), ("sil", 0, 400)], SR)
    tokens = []
    async with aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{port}"
        for protocols, kw in (((), {"key": key}), (("token", key), {})):
            st = await open_stream(s, port, protocols=protocols, **kw)
            await st.send(audio)
            await st.close_stream()
            assert st.words == [f"w{MARK}"]
        async with s.post(f"{base}/v1/auth/grant", headers={"Authorization": f"Token {key}"}) as r:
            tokens.append((await r.json())["access_token"])
        st = await open_stream(s, port, protocols=("bearer", tokens[0]))
        await st.send(audio)
        await st.close_stream()
        for headers in ({"Authorization": f"Token {wrong}"}, {"Authorization": f"Bearer {tokens[0]}x"}):
            status, _, _ = await refused(s, port, headers)
            assert status == 401
        status, _, _ = await refused(s, port, protocols=("token", wrong))
        assert status == 401
        await asyncio.sleep(0.2)  # let the last session-end line be written
    return tokens
