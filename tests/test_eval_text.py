"""The one text normaliser and WER (streamproxy.eval.text) and the speech sets (streamproxy.eval.corpus).

Bad input tried: a non-string transcript, a manifest that is not JSON, a JSON line that is not an
object, a CSV without the header, a missing audio file, a non-WAV file, 8-bit and A-law WAVs, a
duplicate id, a folder with a WAV but no .txt, an empty manifest.
"""

from __future__ import annotations

import hashlib
import re
import wave
from pathlib import Path

import pytest

from streamproxy.eval import corpus, text


@pytest.mark.parametrize(
    ("ref", "hyp"),
    [
        ("go forward ten meters", "Go forward 10 meters."),
        ("and mister john dashwood", "And Mr. John Dashwood,"),
        ("he was not an ill disposed young man", "He was not an ill-disposed young man."),
        ("call me back at seven thirty", "Call me back at 7:30."),
        ("my phone number is one two three four five six seven", "My phone number is 1-2-345-67."),
        ("five five", "5 5"),
        ("one of them", "1 of them"),
        ("it is one point five", "it is 1.5"),
        ("the colour grey", "The color gray."),
        ("he is not here", "He's not here!"),
    ],
)
def test_formatting_differences_are_not_errors(ref: str, hyp: str) -> None:
    assert text.words(ref) == text.words(hyp)
    assert text.wer(ref, hyp) == 0.0


def test_counts_and_alignment_are_exact() -> None:
    s = text.score("ever tried ever failed no matter", "ever tried ever build no matter okay")
    assert (s.ref_words, s.hits, s.substitutions, s.deletions, s.insertions) == (6, 5, 1, 0, 1)
    assert s.wer == pytest.approx(2 / 6) and s.sentence_errors == 1
    steps = text.alignment("fail again fail better", "fail fail better thank you")
    assert text.render(steps) == "fail [-again] fail better [+thank] [+you]"
    assert [st.op for st in steps] == ["equal", "delete", "equal", "equal", "insert", "insert"]
    # A joined word is two errors, as any WER counts it ("coldhearted" for "cold hearted").
    assert text.score("rather cold hearted", "rather coldhearted").errors == 2


def test_empty_sides_and_totals() -> None:
    assert text.score("", "").wer == 0.0 and text.score("", "").sentence_errors == 0
    assert text.score("", "thank you").insertions == 2 and text.score("", "thank you").wer == float("inf")
    assert text.score("hello there", "").deletions == 2 and text.wer("hello there", "") == 1.0
    tot = text.total([("a b", "a b"), ("a b c d", "a x c d"), ("", "")])
    assert (tot.ref_words, tot.errors, tot.sentences, tot.sentence_errors) == (6, 1, 3, 1)
    assert tot.wer == pytest.approx(1 / 6) and tot.ser == pytest.approx(1 / 3)
    assert text.ser([("a", "a"), ("b", "c")]) == 0.5
    with pytest.raises(TypeError, match="str"):
        text.words(None)  # type: ignore[arg-type]


def test_real_set_matches_its_sources() -> None:
    """The built-in real speech: 13 files, 115 words, hashes as documented in SOURCES.md."""
    items = corpus.real()
    assert len(items) == 13 and sum(len(u.text.split()) for u in items) == 115
    wavs = [u.read() for u in items]
    assert all(w.sample_rate == 16000 and w.channels == 1 for w in wavs)
    assert 50 < sum(w.seconds for w in wavs) < 51
    documented = dict(
        (name, digest)
        for digest, name in re.findall(
            r"^([0-9a-f]{64})  (\S+\.wav)$", (corpus.REAL_DIR / "SOURCES.md").read_text(), re.M
        )
    )
    assert {u.path.name: hashlib.sha256(u.path.read_bytes()).hexdigest() for u in items} == documented


def test_phone_set_matches_its_sources() -> None:
    """The built-in telephone set: 89 prompts, 1,071 words, 8 kHz mono, hashes as in SOURCES.md, and
    no reference with what its selection rules exclude (key symbols, ellipses, bracketed tones)."""
    items = corpus.load("phone")
    assert len(items) == 89 and sum(len(u.text.split()) for u in items) == 1071
    wavs = [u.read() for u in items]
    assert all(w.sample_rate == 8000 and w.channels == 1 and w.seconds <= 12 for w in wavs)
    assert 411 < sum(w.seconds for w in wavs) < 412
    assert not [u.id for u in items if re.search(r"[*#\[\]]|\.\.\.", u.text) or len(u.text.split()) < 8]
    documented = dict(
        (name, digest)
        for digest, name in re.findall(
            r"^([0-9a-f]{64})  (\S+\.wav)$", (corpus.PHONE_DIR / "SOURCES.md").read_text(), re.M
        )
    )
    assert {u.path.name: hashlib.sha256(u.path.read_bytes()).hexdigest() for u in items} == documented
    assert corpus.load("real") == corpus.real()


def _wav(path: Path, width: int = 2, frames: bytes = b"\0\0" * 160) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(16000)
        w.writeframes(frames)
    return path


def test_manifest_formats(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav")
    (tmp_path / "sub").mkdir()
    _wav(tmp_path / "sub" / "b.wav")
    (tmp_path / "m.jsonl").write_text(
        '{"audio": "a.wav", "text": "hello"}\n\n{"id": "x", "audio": "sub/b.wav", "text": "hi"}\n'
    )
    assert [(u.id, u.path, u.text) for u in corpus.load(tmp_path / "m.jsonl")] == [
        ("a", tmp_path / "a.wav", "hello"),
        ("x", tmp_path / "sub" / "b.wav", "hi"),
    ]
    (tmp_path / "m.csv").write_text('audio,text\na.wav,"hello, world"\n')
    assert [(u.id, u.text) for u in corpus.load(tmp_path / "m.csv")] == [("a", "hello, world")]
    (tmp_path / "sub" / "b.txt").write_text("hi there\n")
    assert [(u.id, u.text) for u in corpus.load(tmp_path / "sub")] == [("b", "hi there")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"audio": "a.wav", "text": "x"}\nnot json\n', r"m\.jsonl:2: not JSON"),
        ('{"audio": "a.wav", "text": "x"}\n[1, 2]\n', r"m\.jsonl:2: expected an object"),
        ('{"audio": "a.wav"}\n', r"m\.jsonl:1: 'text' must be a string"),
        ('{"text": "x"}\n', r"m\.jsonl:1: 'audio' must be a non-empty path"),
        ('{"audio": "gone.wav", "text": "x"}\n', r"gone\.wav.*does not exist"),
        ('{"audio": "notwav.wav", "text": "x"}\n', r"notwav\.wav: not a WAV file"),
        ('{"audio": "u8.wav", "text": "x"}\n', r"u8\.wav: only 16-bit PCM"),
        ('{"audio": "a.wav", "text": "x"}\n{"audio": "a.wav", "text": "y"}\n', r"duplicate id 'a'"),
        ("path,words\na.wav,x\n", r"header row with 'audio' and 'text'"),
        ("\n", r"no utterances"),
    ],
)
def test_bad_manifests_are_named(tmp_path: Path, content: str, message: str) -> None:
    _wav(tmp_path / "a.wav")
    _wav(tmp_path / "u8.wav", width=1, frames=b"\x80" * 160)
    (tmp_path / "notwav.wav").write_bytes(b"ID3 this is an mp3, honest")
    (tmp_path / "m.jsonl").write_text(content)
    with pytest.raises(corpus.CorpusError, match=message):
        corpus.load(tmp_path / "m.jsonl")


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(corpus.CorpusError, match="no such manifest"):
        corpus.load(tmp_path / "missing.jsonl")
    _wav(tmp_path / "a.wav")
    with pytest.raises(corpus.CorpusError, match=r"a\.wav: no reference transcript a\.txt"):
        corpus.load(tmp_path)
    (tmp_path / "a.wav").unlink()
    with pytest.raises(corpus.CorpusError, match="no utterances"):
        corpus.load(tmp_path)


def test_synthetic_set(tmp_path: Path) -> None:
    items = corpus.synthetic(tmp_path, corpus.SENTENCES[:2])
    assert [u.id for u in items] == ["espeak-00-en-us", "espeak-01-en-gb"]
    assert corpus.load(tmp_path / "manifest.jsonl") == items
    assert all(u.read().sample_rate == 16000 and u.read().seconds > 1 for u in items)
