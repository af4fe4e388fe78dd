"""Text normalisation and word error rate: the one place where a transcript is compared to a reference.

Recognisers format the same words differently ("10" / "ten", "Mr." / "mister", "cold-hearted" /
"cold hearted", "7:30" / "seven thirty"); a WER that counts those as errors measures formatting,
not recognition. Both sides therefore go through Whisper's English normaliser
(``whisper-normalizer``, a packaging of OpenAI's ``EnglishTextNormalizer``: case, punctuation,
hyphens, contractions, British spellings, titles, fillers, spelled-out numbers → digits), then
two fixes for its number quirks, so that every spelling of a number ends up as one digit string:

* it keeps a lone "one" as a word but turns a lone "1" into "one" (and "1.5" into "one.5"): every
  "one" becomes "1";
* it joins "one two three" into "123" but leaves "1 2 3" (and "7 30") apart: adjacent digit tokens
  are joined.

Errors are counted by ``jiwer`` (Levenshtein alignment over words).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Literal

import jiwer

Op = Literal["equal", "substitute", "delete", "insert"]

_DIGIT_HYPHEN = re.compile(r"(?<=\d)-(?=\d)")  # "1-2-3": Whisper's normaliser would keep "1-" apart
_ONE = re.compile(r"^one(?=$|\.\d)")
_DIGITS = re.compile(r"^\d+(\.\d+)?$")


@cache
def _whisper() -> Callable[[str], str]:
    """Built once: the normaliser loads its spelling table at construction."""
    from whisper_normalizer.english import EnglishTextNormalizer

    normaliser: Callable[[str], str] = EnglishTextNormalizer()
    return normaliser


def words(text: str) -> list[str]:
    """The normalised words of ``text`` (see the module docstring); ``[]`` for silence or punctuation only."""
    if not isinstance(text, str):
        raise TypeError(f"expected text as str, got {type(text).__name__}")
    norm = _whisper()(_DIGIT_HYPHEN.sub(" ", text))
    out: list[str] = []
    for w in norm.split():
        w = _ONE.sub("1", w)
        if _DIGITS.match(w) and out and out[-1].isdigit() and w[0].isdigit():
            out[-1] += w
        else:
            out.append(w)
    return out


def normalise(text: str) -> str:
    """``text`` in canonical form: normalised words joined by single spaces."""
    return " ".join(words(text))


@dataclass(frozen=True)
class Score:
    """Word counts of one or more (reference, hypothesis) pairs; add them with ``+``."""

    ref_words: int = 0
    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    sentences: int = 0
    sentence_errors: int = 0  # pairs with at least one word error

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Errors per reference word; with no reference words, 0.0 if nothing was inserted else inf."""
        if self.ref_words == 0:
            return 0.0 if self.insertions == 0 else float("inf")
        return self.errors / self.ref_words

    @property
    def ser(self) -> float:
        """Sentence error rate: fraction of pairs with any word error (0.0 for no pairs)."""
        return self.sentence_errors / self.sentences if self.sentences else 0.0

    def __add__(self, other: Score) -> Score:
        return Score(
            self.ref_words + other.ref_words,
            self.hits + other.hits,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.sentences + other.sentences,
            self.sentence_errors + other.sentence_errors,
        )


@dataclass(frozen=True)
class Step:
    """One step of the word alignment: ``ref`` is None for an insertion, ``hyp`` None for a deletion."""

    op: Op
    ref: str | None
    hyp: str | None


def _align(ref: list[str], hyp: list[str]) -> tuple[Score, list[Step]]:
    if not ref:  # jiwer refuses an empty reference; everything said is an insertion
        ins = len(hyp)
        return Score(0, 0, 0, 0, ins, 1, int(ins > 0)), [Step("insert", None, h) for h in hyp]
    if not hyp:
        return Score(len(ref), 0, 0, len(ref), 0, 1, 1), [Step("delete", r, None) for r in ref]
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    steps: list[Step] = []
    for c in out.alignments[0]:
        r, h = ref[c.ref_start_idx : c.ref_end_idx], hyp[c.hyp_start_idx : c.hyp_end_idx]
        if c.type == "equal":
            steps += [Step("equal", a, b) for a, b in zip(r, h, strict=True)]
        elif c.type == "substitute":
            steps += [Step("substitute", a, b) for a, b in zip(r, h, strict=True)]
        elif c.type == "delete":
            steps += [Step("delete", a, None) for a in r]
        else:
            steps += [Step("insert", None, b) for b in h]
    errors = out.substitutions + out.deletions + out.insertions
    score = Score(len(ref), out.hits, out.substitutions, out.deletions, out.insertions, 1, int(errors > 0))
    return score, steps


def score(reference: str, hypothesis: str) -> Score:
    """Word counts of one pair, after :func:`words` on both sides."""
    return _align(words(reference), words(hypothesis))[0]


def alignment(reference: str, hypothesis: str) -> list[Step]:
    """The word alignment of one pair (normalised words), in order."""
    return _align(words(reference), words(hypothesis))[1]


def total(pairs: Iterable[tuple[str, str]]) -> Score:
    """Summed :class:`Score` of (reference, hypothesis) pairs: corpus WER is ``total(...).wer``."""
    s = Score()
    for ref, hyp in pairs:
        s = s + score(ref, hyp)
    return s


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one pair (normalised)."""
    return score(reference, hypothesis).wer


def ser(pairs: Iterable[tuple[str, str]]) -> float:
    """Sentence error rate over pairs: the fraction with at least one word error."""
    return total(pairs).ser


def render(steps: Iterable[Step]) -> str:
    """An alignment as one line: equal words plain, ``[ref→hyp]``, ``[-ref]``, ``[+hyp]``."""
    parts = []
    for s in steps:
        if s.op == "equal":
            parts.append(str(s.ref))
        elif s.op == "substitute":
            parts.append(f"[{s.ref}→{s.hyp}]")
        elif s.op == "delete":
            parts.append(f"[-{s.ref}]")
        else:
            parts.append(f"[+{s.hyp}]")
    return " ".join(parts)
