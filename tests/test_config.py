"""Config loading: defaults, layering, and that every bad value is reported by its key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproxy.config import (
    Config,
    ConfigError,
    ServerConfig,
    UpstreamConfig,
    load_config,
    redact,
    resolve_data_dir,
)

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def error_for(path: Path | None = None, env: dict[str, str] | None = None, **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {}, **kw)
    return info.value


# --------------------------------------------------------------------------- defaults and file


def test_defaults() -> None:
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.server == ServerConfig(host="127.0.0.1", port=8080, data_dir="")
    assert cfg.engine.kind == "auto" and cfg.engine.processes == 1
    assert cfg.upstreams == ()
    assert cfg.session.frame_ms == 100 and cfg.session.drain_timeout_s == 30.0
    assert cfg.queue.prefix == "{streamproxy}" and cfg.queue.url_allow == ()
    assert cfg.auth.allow_anonymous is None
    assert cfg.log.format == "json"


def test_no_implicit_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[server]\nport = 1234\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}).server.port == 8080


def test_shipped_example_equals_defaults() -> None:
    """config.toml documents every key with its default; it must not drift from the code."""
    assert load_config(REPO / "config.toml", env={}) == Config()


def test_shipped_example_lists_every_key() -> None:
    data = tomllib.loads((REPO / "config.toml").read_text())
    for section in dataclasses.fields(Config):
        if section.name == "upstreams":
            continue
        keys = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(data[section.name]) == keys, section.name


def test_file_loading(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
port = 9001
[engine]
kind = "Marker"
processes = 4
[session]
buffer_seconds = 5       # int accepted for float
[queue]
url_allow = ["10.0.0.0/8", "example.com"]
redis_url = "redis://localhost:6379/0"
[auth]
allow_anonymous = false
[log]
level = "WARN"
[upstream.b]
url = "wss://b.example"
priority = 1
[upstream.A]
url = "ws://a.example:8080"
priority = 1
[upstream.z]
url = "wss://z.example"
""",
    )
    cfg = load_config(path, env={})
    assert cfg.server.port == 9001
    assert cfg.engine.kind == "marker" and cfg.engine.processes == 4
    assert cfg.session.buffer_seconds == 5.0 and isinstance(cfg.session.buffer_seconds, float)
    assert cfg.queue.url_allow == ("10.0.0.0/8", "example.com")
    assert cfg.auth.allow_anonymous is False
    assert cfg.log.level == "warning"
    assert [u.name for u in cfg.upstreams] == ["z", "a", "b"]
    assert cfg.upstreams[1] == UpstreamConfig(name="a", url="ws://a.example:8080", api_key="", priority=1)


# --------------------------------------------------------------------------- env and precedence


def test_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9001\nhost = "0.0.0.0"\n')
    env = {
        "STREAMPROXY_SERVER_PORT": "9000",
        "STREAMPROXY_ENGINE_KIND": "marker",
        "STREAMPROXY_QUEUE_URL_ALLOW": "10.0.0.0/8, example.com,",
        "STREAMPROXY_AUTH_ALLOW_ANONYMOUS": "yes",
        "STREAMPROXY_METRICS_ENABLED": "0",
        "STREAMPROXY_SESSION_KEEPALIVE_S": "2.5",
        "STREAMPROXY_CONFIG": "/somewhere/else.toml",
        "STREAMPROXY_TEST_WHATEVER": "ignored",
        "UNRELATED": "x",
    }
    cfg = load_config(path, env=env)
    assert cfg.server.port == 9000
    assert cfg.server.host == "0.0.0.0"
    assert cfg.engine.kind == "marker"
    assert cfg.queue.url_allow == ("10.0.0.0/8", "example.com")
    assert cfg.auth.allow_anonymous is True
    assert cfg.metrics.enabled is False
    assert cfg.session.keepalive_s == 2.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("False", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("NO", False),
        ("auto", None),
    ],
)
def test_env_bools(text: str, expected: bool | None) -> None:
    assert load_config(env={"STREAMPROXY_AUTH_ALLOW_ANONYMOUS": text}).auth.allow_anonymous is expected


def test_overrides_win(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\n")
    cfg = load_config(
        path,
        env={"STREAMPROXY_SERVER_PORT": "9000"},
        overrides={"server.port": 9002, "log.format": "text", "engine.processes": "3", "server.host": None},
    )
    assert cfg.server.port == 9002
    assert cfg.log.format == "text"
    assert cfg.engine.processes == 3
    assert cfg.server.host == "127.0.0.1"


def test_upstream_env() -> None:
    env = {
        "STREAMPROXY_UPSTREAM_LOCAL_DG_URL": "ws://127.0.0.1:9999",
        "STREAMPROXY_UPSTREAM_LOCAL_DG_API_KEY": "k1",
        "STREAMPROXY_UPSTREAM_LOCAL_DG_PRIORITY": "5",
        "STREAMPROXY_UPSTREAM_OTHER_URL": "wss://other.example",
    }
    cfg = load_config(env=env)
    assert cfg.upstreams == (
        UpstreamConfig(name="other", url="wss://other.example"),
        UpstreamConfig(name="local_dg", url="ws://127.0.0.1:9999", api_key="k1", priority=5),
    )


def test_upstream_env_merges_with_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream.dg]\nurl = "wss://api.deepgram.com"\n')
    cfg = load_config(path, env={"STREAMPROXY_UPSTREAM_DG_API_KEY": "secret"})
    assert cfg.upstreams == (UpstreamConfig(name="dg", url="wss://api.deepgram.com", api_key="secret"),)


def test_deepgram_api_key_adds_upstream() -> None:
    cfg = load_config(env={"DEEPGRAM_API_KEY": "dgkey"})
    assert cfg.upstreams == (UpstreamConfig(name="deepgram", url="wss://api.deepgram.com", api_key="dgkey"),)


def test_deepgram_api_key_fills_existing(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream.deepgram]\nurl = "wss://eu.example"\npriority = 2\n')
    cfg = load_config(path, env={"DEEPGRAM_API_KEY": "dgkey"})
    assert cfg.upstreams == (UpstreamConfig(name="deepgram", url="wss://eu.example", api_key="dgkey", priority=2),)


def test_deepgram_api_key_does_not_replace_explicit_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream.deepgram]\nurl = "wss://eu.example"\napi_key = "mine"\n')
    cfg = load_config(path, env={"DEEPGRAM_API_KEY": "dgkey"})
    assert cfg.upstreams[0].api_key == "mine"


def test_empty_deepgram_api_key_ignored() -> None:
    assert load_config(env={"DEEPGRAM_API_KEY": ""}).upstreams == ()


@given(st.integers(min_value=0, max_value=65535))
def test_env_port_roundtrip(port: int) -> None:
    assert load_config(env={"STREAMPROXY_SERVER_PORT": str(port)}).server.port == port


# --------------------------------------------------------------------------- errors name the key


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[servr]\nport = 1\n", "servr"),
        ("[server]\nprot = 1\n", "server.prot"),
        ("port = 1\n", "port"),
        ("[server]\nport = 1.5\n", "server.port"),
        ('[server]\nport = "abc"\n', "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ('[server]\nhost = ""\n', "server.host"),
        ("[session]\nframe_ms = 5\n", "session.frame_ms"),
        ("[session]\nframe_ms = 2000\n", "session.frame_ms"),
        ("[session]\nkeepalive_s = 0\n", "session.keepalive_s"),
        ("[session]\nstall_timeout_s = -1\n", "session.stall_timeout_s"),
        ('[session]\nbuffer_seconds = "lots"\n', "session.buffer_seconds"),
        ('[engine]\nkind = "vosk"\n', "engine.kind"),
        ("[engine]\nprocesses = 0\n", "engine.processes"),
        ("[engine]\nprocesses = 65\n", "engine.processes"),
        ("[engine]\nbase_port = 65535\nprocesses = 2\n", "engine.base_port"),
        ('[log]\nlevel = "loud"\n', "log.level"),
        ('[log]\nformat = "xml"\n', "log.format"),
        ('[metrics]\nenabled = "yes"\n', "metrics.enabled"),
        ('[queue]\nurl_allow = "example.com"\n', "queue.url_allow"),
        ('[queue]\nredis_url = "http://x"\n', "queue.redis_url"),
        ("[queue]\nsync_max_seconds = 400.0\n", "queue.async_min_seconds"),
        ("[reconnect]\nbase_s = 60.0\n", "reconnect.cap_s"),
        ('[auth]\nallow_anonymous = "sometimes"\n', "auth.allow_anonymous"),
        ('[upstream.dg]\nurl = "https://api.deepgram.com"\n', "upstream.dg.url"),
        ('[upstream.dg]\nurl = "wss://"\n', "upstream.dg.url"),
        ('[upstream.dg]\napi_key = "k"\n', "upstream.dg.url"),
        ('[upstream.dg]\nurl = "wss://x"\nweight = 1\n', "upstream.dg.weight"),
        ('[upstream.dg]\nurl = "wss://x"\npriority = "high"\n', "upstream.dg.priority"),
        ('[upstream."bad name"]\nurl = "wss://x"\n', "upstream.bad name"),
        ('[server]\nregion = "EU West"\n', "server.region"),  # a label value: no spaces, lower case
        ('[upstream.dg]\nurl = "wss://x"\nregion = "-eu"\n', "upstream.dg.region"),
        ("[server\n", None),
    ],
)
def test_bad_file_names_key(tmp_path: Path, toml: str, key: str | None) -> None:
    path = write(tmp_path, toml)
    err = error_for(path)
    expected = key if key is not None else str(path)
    assert err.key == expected
    assert str(err).startswith(expected + ": ")
    assert isinstance(err, ValueError)


def test_message_format(tmp_path: Path) -> None:
    err = error_for(write(tmp_path, '[session]\nframe_ms = "abc"\n'))
    assert str(err) == "session.frame_ms: must be an integer between 10 and 1000 (got 'abc')"


def test_missing_file(tmp_path: Path) -> None:
    err = error_for(tmp_path / "nope.toml")
    assert err.key == str(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"STREAMPROXY_SERVER_PORT": "abc"}, "server.port"),
        ({"STREAMPROXY_SERVER_PORT": "1.5"}, "server.port"),
        ({"STREAMPROXY_SERVER_PORT": "99999"}, "server.port"),
        ({"STREAMPROXY_SESSION_FRAME_MS": "abc"}, "session.frame_ms"),
        ({"STREAMPROXY_SESSION_CLOSE_TIMEOUT_S": "nan"}, "session.close_timeout_s"),
        ({"STREAMPROXY_METRICS_ENABLED": "maybe"}, "metrics.enabled"),
        ({"STREAMPROXY_SERVER_PROT": "1"}, "STREAMPROXY_SERVER_PROT"),
        ({"STREAMPROXY_SERVERPORT": "1"}, "STREAMPROXY_SERVERPORT"),
        ({"STREAMPROXY_FOO": "1"}, "STREAMPROXY_FOO"),
        ({"STREAMPROXY_UPSTREAM_DG_TOKEN": "x"}, "STREAMPROXY_UPSTREAM_DG_TOKEN"),
        ({"STREAMPROXY_UPSTREAM_DG_URL": "http://x"}, "upstream.dg.url"),
        ({"STREAMPROXY_UPSTREAM_DG_API_KEY": "k"}, "upstream.dg.url"),
        ({"STREAMPROXY_SERVER_REGION": "eu/west"}, "server.region"),
    ],
)
def test_bad_env_names_key(env: dict[str, str], key: str) -> None:
    err = error_for(env=env)
    assert err.key == key
    assert str(err).startswith(key + ": ")


def test_env_error_mentions_variable() -> None:
    err = error_for(env={"STREAMPROXY_SESSION_FRAME_MS": "abc"})
    assert "STREAMPROXY_SESSION_FRAME_MS" in str(err)


def test_bad_override_key() -> None:
    assert error_for(overrides={"server.prot": 1}).key == "server.prot"
    assert error_for(overrides={"nope": 1}).key == "nope"
    assert error_for(overrides={"server.port": -1}).key == "server.port"


# --------------------------------------------------------------------------- helpers


def test_redact() -> None:
    cfg = load_config(
        env={
            "DEEPGRAM_API_KEY": "dgkey",
            "STREAMPROXY_AUTH_TOKEN_SECRET": "shh",
            "STREAMPROXY_QUEUE_REDIS_URL": "redis://user:pw@redis.local:6379/0",
        }
    )
    out = redact(cfg)
    assert out["upstreams"][0]["api_key"] == "***"
    assert out["auth"]["token_secret"] == "***"
    assert out["queue"]["redis_url"] == "redis://user:***@redis.local:6379/0"
    assert "dgkey" not in repr(out) and "shh" not in repr(out) and "pw@" not in repr(out)
    assert out["server"]["port"] == 8080
    assert redact(Config())["auth"]["token_secret"] == ""
    orjson.dumps(out)  # JSON-able


def test_resolve_data_dir(tmp_path: Path) -> None:
    assert resolve_data_dir(ServerConfig(data_dir=str(tmp_path)), env={}) == tmp_path
    assert resolve_data_dir(ServerConfig(), env={"STATE_DIRECTORY": "/var/lib/sp:/x"}) == Path("/var/lib/sp")
    assert resolve_data_dir(ServerConfig(), env={"XDG_DATA_HOME": "/d"}) == Path("/d/streamproxy")
    assert resolve_data_dir(ServerConfig(), env={}) == Path.home() / ".local/share/streamproxy"


def test_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.server.port = 1  # type: ignore[misc]
