"""Speech sets: (WAV file, reference text) pairs from a manifest, a folder, or the built-in sets.

* ``real()``: 13 utterances of human read speech (115 words, 50.5 s) shipped with this package,
  copied from registry packages with their transcripts; provenance, licences and hashes in
  ``speech/real/SOURCES.md``.
* ``phone()``: 89 recorded telephone prompts of a human voice (1,071 words, 411 s, 8 kHz) from
  Debian's Asterisk sounds, selected by fixed rules (``speech/phone/SOURCES.md``): the narrow-band
  audio a voice agent receives.
* ``synthetic(directory)``: sentences spoken by espeak-ng (two voices), written as WAVs; cheap to
  make, but a recogniser's WER on them says little about real voices, so report both.

A manifest is either JSON Lines, one ``{"audio": "path.wav", "text": "reference"}`` object a line
(optional ``"id"``), or CSV with a header row naming the columns ``audio`` and ``text``; relative
paths are relative to the manifest's folder. A folder is every ``*.wav`` in it with a sibling
``.txt`` of the same stem holding its reference. WAVs must be 16-bit PCM (any rate, any channels).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REAL_DIR = Path(__file__).resolve().parent / "speech" / "real"
PHONE_DIR = REAL_DIR.parent / "phone"

SENTENCES = (
    "The weather is lovely today and we are going to the park.",
    "Please send the report to my office before noon.",
    "She bought three apples and a loaf of bread at the market.",
    "Call me back at seven thirty tomorrow morning.",
    "The meeting has been moved to the large room on the second floor.",
    "Our train leaves from platform nine in twenty minutes.",
    "He forgot his umbrella and walked home in the rain.",
    "Turn left at the next corner and then go straight ahead.",
    "The children were playing football in the garden all afternoon.",
    "We need to order more paper for the printer this week.",
    "My phone number is one two three four five six seven.",
    "The library closes early on Sundays during the summer.",
)
VOICES = ("en-us", "en-gb")


class CorpusError(ValueError):
    """A manifest, folder or audio file that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class Wav:
    """A 16-bit PCM WAV read into memory."""

    pcm: bytes
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (2 * self.channels * self.sample_rate)


def read_wav(path: Path) -> Wav:
    """The samples of a 16-bit PCM WAV; :class:`CorpusError` for anything else."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
                raise CorpusError(f"{path}: only 16-bit PCM WAV is supported (sample width {w.getsampwidth() * 8})")
            return Wav(w.readframes(w.getnframes()), w.getframerate(), w.getnchannels())
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as e:
        raise CorpusError(f"{path}: not a WAV file ({e})") from None
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e}") from None


@dataclass(frozen=True)
class Utterance:
    """One audio file and what was said in it."""

    id: str
    path: Path
    text: str

    def read(self) -> Wav:
        return read_wav(self.path)


def _checked(items: list[Utterance], source: Path) -> list[Utterance]:
    if not items:
        raise CorpusError(f"{source}: no utterances")
    seen: set[str] = set()
    for u in items:
        if u.id in seen:
            raise CorpusError(f"{source}: duplicate id {u.id!r}")
        seen.add(u.id)
        if not u.path.is_file():
            raise CorpusError(f"{source}: audio file {u.path} (id {u.id!r}) does not exist")
        u.read()  # a clear error now rather than in the middle of a run
    return items


def _entry(source: Path, where: str, audio: object, text: object, uid: object) -> Utterance:
    if not isinstance(audio, str) or not audio:
        raise CorpusError(f"{source}:{where}: 'audio' must be a non-empty path")
    if not isinstance(text, str):
        raise CorpusError(f"{source}:{where}: 'text' must be a string (the reference transcript)")
    path = Path(audio) if Path(audio).is_absolute() else source.parent / audio
    return Utterance(str(uid) if uid is not None else Path(audio).stem, path, text)


def _jsonl(path: Path, lines: list[str]) -> list[Utterance]:
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f'{path}:{n}: not JSON ({e.msg}); expected {{"audio": ..., "text": ...}}') from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{path}:{n}: expected an object with 'audio' and 'text'")
        out.append(_entry(path, str(n), obj.get("audio"), obj.get("text"), obj.get("id")))
    return out


def _csv(path: Path, text: str) -> list[Utterance]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"audio", "text"} <= set(reader.fieldnames):
        raise CorpusError(f"{path}: a CSV manifest needs a header row with 'audio' and 'text' columns")
    return [_entry(path, str(n), row["audio"], row["text"], row.get("id")) for n, row in enumerate(reader, 2)]


def load_manifest(path: Path) -> list[Utterance]:
    """Utterances of a JSONL or CSV manifest (see the module docstring), every audio file checked."""
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such manifest") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: cannot read manifest: {e}") from None
    first = content.lstrip()[:1]
    if not first:
        raise CorpusError(f"{path}: empty manifest, no utterances")
    items = _jsonl(path, content.splitlines()) if first == "{" else _csv(path, content)
    return _checked(items, path)


def load_dir(directory: Path) -> list[Utterance]:
    """Every ``*.wav`` in ``directory`` with its sibling ``.txt`` reference, sorted by name."""
    items = []
    for wav in sorted(directory.glob("*.wav")):
        txt = wav.with_suffix(".txt")
        if not txt.is_file():
            raise CorpusError(f"{wav}: no reference transcript {txt.name} beside it")
        items.append(Utterance(wav.stem, wav, txt.read_text(encoding="utf-8").strip()))
    return _checked(items, directory)


def load(source: str | Path) -> list[Utterance]:
    """A manifest file, a folder of WAVs or a built-in set's name (what ``streamproxy eval`` takes)."""
    if source == "real":
        return real()
    if source == "phone":
        return phone()
    p = Path(source)
    if p.is_dir():
        return load_dir(p)
    return load_manifest(p)


def real() -> list[Utterance]:
    """The built-in real-speech set (human read speech, 115 words)."""
    return load_manifest(REAL_DIR / "manifest.jsonl")


def phone() -> list[Utterance]:
    """The built-in telephone set (a human voice, 8 kHz prompts, 1,071 words)."""
    return load_manifest(PHONE_DIR / "manifest.jsonl")


def require_tts() -> None:
    """Raise with the install command when espeak-ng or sox is missing."""
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise CorpusError(f"{', '.join(missing)} not installed: `apt-get install espeak-ng sox` (synthetic speech)")


def synthesize(text: str, path: Path, voice: str = "en-us", speed: int = 150, sample_rate: int = 16000) -> Path:
    """``text`` spoken by espeak-ng into ``path`` (mono 16-bit WAV at ``sample_rate``, via sox)."""
    require_tts()
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", str(sample_rate), "-c", "1", "-b", "16", str(path)], check=True, capture_output=True
    )
    raw.unlink()
    return path


def synthetic(directory: Path, sentences: Sequence[str] = SENTENCES, voices: Sequence[str] = VOICES) -> list[Utterance]:
    """``sentences`` spoken by espeak-ng, voices in turn, as WAVs plus ``manifest.jsonl`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    items = []
    lines = []
    for i, text in enumerate(sentences):
        voice = voices[i % len(voices)]
        uid = f"espeak-{i:02d}-{voice}"
        path = synthesize(text, directory / f"{uid}.wav", voice)
        items.append(Utterance(uid, path, text))
        lines.append(json.dumps({"id": uid, "audio": path.name, "text": text}))
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return items
