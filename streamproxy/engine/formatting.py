"""Recognizer words → Deepgram's words, formatted as Nova formats them for the request's options.

Deepgram (Nova) without ``punctuate``/``smart_format``/``numerals`` returns spoken words: lower
case, no punctuation, numbers as words ("ten", not "10"), abbreviations as said ("mister", not
"mr"). Whisper writes formatted text ("Mr. Smith paid $10."), so its tokens are first brought back
to that spoken form; the options then format it again, the same way for every engine kind:

* ``word`` is always the plain form: lower case, no punctuation; numbers are words unless
  ``numerals`` (or ``smart_format``), which turns runs of number words into digits ("ten" → "10",
  "twenty one" → "21", "nine hundredth" → "900th") as one word spanning them;
* ``punctuated_word`` (``punctuate`` or ``smart_format``) carries the recognizer's capitalisation
  and punctuation ("Mister", "ten.", "10."); without them it is the plain word, since a recognizer
  that only knows lower case (pocketsphinx) has nothing more to add.

Numbers become words with ``num2words``, words become digits with ``text2num``; the rules that
decide how a digit string was said (a year, a phone number, a time) are here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from num2words import num2words
from text_to_num import alpha2digit

from streamproxy.deepgram.types import Word

__all__ = ["Formatting", "Token", "format_words", "spoken"]


@dataclass(frozen=True, slots=True)
class Formatting:
    """What the request asked for (``smart_format`` implies both)."""

    punctuate: bool = False
    numerals: bool = False


@dataclass(frozen=True, slots=True)
class Token:
    """One word as a recognizer wrote it (``" Mr."``, ``"10,"``, ``"hello"``), times in seconds."""

    text: str
    start: float
    end: float
    confidence: float


# Abbreviations as they are said (Whisper writes the abbreviation; Nova writes the word).
_ABBREVIATIONS = {
    "mr": "mister",
    "mrs": "missus",
    "dr": "doctor",
    "jr": "junior",
    "sr": "senior",
    "vs": "versus",
    "etc": "et cetera",
    "ok": "okay",
}
_SYMBOLS = {"&": "and", "%": "percent", "+": "plus", "@": "at", "=": "equals", "#": "number"}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents")}  # fmt: skip
_EDGE = re.compile(r"^([^\w$£€#@&+]*)(.*?)([^\w%&+]*)$", re.DOTALL)
_PLAIN = re.compile(r"^[^\w']+|[^\w']+$")
_INT = re.compile(r"\d{1,3}(?:,\d{3})+|\d+")
_NUMBER_WORDS = frozenset(
    "zero oh one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million "
    "billion trillion point and first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth thirtieth fortieth "
    "fiftieth sixtieth seventieth eightieth ninetieth hundredth thousandth millionth".split()
)


def _say(text: str, **kw: str) -> list[str]:
    """num2words, as separate lower-case words without commas, hyphens or "and"."""
    words = num2words(int(text), lang="en", **kw).replace("-", " ").replace(",", " ").split()
    return [w for w in words if w != "and"]


def _digits(digits: str) -> list[str]:
    return [num2words(int(d), lang="en") for d in digits]


def _integer(digits: str) -> list[str]:
    """How a bare digit string is read: ids digit by digit, years as years, the rest as a number."""
    if "," in digits:
        return _say(digits.replace(",", ""))
    n = int(digits)
    if (len(digits) > 1 and digits[0] == "0") or len(digits) >= 5:
        return _digits(digits)
    if len(digits) == 4 and (1100 <= n <= 1999 or 2010 <= n <= 2099):
        return _say(str(n), to="year")
    return _say(str(n))


def _number(core: str) -> list[str] | None:
    """Spoken words of a token with digits ("$5.50", "7:30", "21st", "1990s", "3.5", "1-2-3"), else None."""
    m = re.fullmatch(r"([$£€])(\d[\d,]*)(?:\.(\d\d))?", core)
    if m:
        one, many, sub, subs = _CURRENCY[m.group(1)]
        amount = int(m.group(2).replace(",", ""))
        money = [*_integer(m.group(2)), one if amount == 1 else many]
        if m.group(3) and int(m.group(3)):
            money += ["and", *_say(m.group(3).lstrip("0") or "0"), sub if int(m.group(3)) == 1 else subs]
        return money
    m = re.fullmatch(r"(\d{1,2}):(\d\d)", core)
    if m:
        mm = m.group(2)
        rest = ["o'clock"] if mm == "00" else ["oh", *_say(mm[1])] if mm[0] == "0" else _say(mm)
        return [*_say(m.group(1)), *rest]
    m = re.fullmatch(r"(\d+)(st|nd|rd|th)", core, re.IGNORECASE)
    if m:
        return _say(m.group(1), to="ordinal")
    m = re.fullmatch(r"(\d+)'?s", core)
    if m:  # "1990s" -> "nineteen nineties", "80s" -> "eighties"
        words = _integer(m.group(1))
        last = words[-1]
        words[-1] = last[:-1] + "ies" if last.endswith("y") else last + "s"
        return words
    m = re.fullmatch(r"(\d+)\.(\d+)", core)
    if m:
        return [*_integer(m.group(1)), "point", *(num2words(int(d), lang="en") for d in m.group(2))]
    if re.fullmatch(r"\d[\d,]*", core) and _INT.fullmatch(core):
        return _integer(core)
    if not re.search(r"\d", core):
        return None
    parts = [p for p in re.split(r"[-/]", core) if p]
    if len(parts) > 1 and all(p.isdigit() for p in parts):  # "555-1234", "1-2-345" (counting), "24/7"
        return [w for p in parts for w in (_digits(p) if len(p) >= 3 else _integer(p))]
    if len(parts) > 1:
        return [w for p in parts for w in spoken(p)]
    out: list[str] = []  # "3D", "MP3", "4x4": letters and digit runs apart
    for run in re.findall(r"\d+|[^\W\d_]+", core):
        out += _integer(run) if run.isdigit() else [run.lower()]
    return out


def spoken(text: str) -> list[str]:
    """The plain spoken words of one recognizer token: ``"Mr."`` → ``["mister"]``, ``"$5"`` → ``["five", "dollars"]``.

    Used by the recognizers' formatting and by anything that must compare text as it was said.
    """
    m = _EDGE.match(text.strip())
    body, trail = (m.group(2), m.group(3)) if m else (text, "")
    if not body:
        return []
    if body[-1] in "%":
        return [*spoken(body[:-1]), "percent"]
    if body in _SYMBOLS:
        return [_SYMBOLS[body]]
    number = _number(body)
    if number is not None:
        return number
    low = body.lower()
    if low in _ABBREVIATIONS and (trail.startswith(".") or low == "ok"):
        return _ABBREVIATIONS[low].split()
    word = _PLAIN.sub("", low).strip("'")
    return [word] if word else []


@dataclass(slots=True)
class _Spoken:
    word: str
    display: str  # cased and punctuated
    start: float
    end: float
    confidence: float


def _expand(tok: Token) -> list[_Spoken]:
    """One token → its spoken words, the token's span shared by their lengths, punctuation kept at the edges."""
    text = tok.text.strip()
    words = spoken(text)
    if not words:
        return []
    m = _EDGE.match(text)
    lead, body, trail = (m.group(1), m.group(2), m.group(3)) if m else ("", text, "")
    if len(words) == 1 and _PLAIN.sub("", body.lower()).strip("'") == words[0]:
        displays = [text]  # nothing was expanded: the recognizer's own form
    else:
        displays = list(words)
        if body[:1].isupper():
            displays[0] = displays[0][:1].upper() + displays[0][1:]
        displays[0] = lead + displays[0]
        if trail.rstrip(".") != trail and body.lower().rstrip(".") in _ABBREVIATIONS:
            trail = trail[:-1]  # "Mr." -> "Mister": the period belonged to the abbreviation
        displays[-1] += trail
    total = sum(len(w) for w in words)
    out, t = [], tok.start
    for k, (w, d) in enumerate(zip(words, displays, strict=True)):
        e = tok.end if k == len(words) - 1 else t + (tok.end - tok.start) * len(w) / total
        out.append(_Spoken(w, d, t, e, tok.confidence))
        t = e
    return out


def _digit_groups(words: Sequence[_Spoken]) -> list[tuple[int, int, str]]:
    """``(i, j, digits)``: ``words[i:j]`` said ``digits`` (text2num's alpha2digit, aligned back)."""
    plain = [w.word for w in words]
    out = alpha2digit(" ".join(plain), "en").split()
    groups: list[tuple[int, int, str]] = []
    i = 0
    for tok in out:
        if i < len(plain) and tok == plain[i]:
            i += 1
            continue
        for j in range(i + 1, min(len(plain), i + 12) + 1):
            if alpha2digit(" ".join(plain[i:j]), "en", threshold=0) == tok:
                groups.append((i, j, tok))
                i = j
                break
        else:
            return groups  # could not align: leave the rest as words
    return groups


def _numerals(words: list[_Spoken]) -> list[_Spoken]:
    if not any(w.word in _NUMBER_WORDS for w in words):
        return words
    out: list[_Spoken] = []
    i = 0
    for a, b, digits in _digit_groups(words):
        out += words[i:a]
        first, last = words[a], words[b - 1]
        lead = _EDGE.match(first.display)
        trail = _EDGE.match(last.display)
        display = (lead.group(1) if lead else "") + digits + (trail.group(3) if trail else "")
        conf = min(w.confidence for w in words[a:b])
        out.append(_Spoken(digits, display, first.start, last.end, conf))
        i = b
    return out + words[i:]


def _capitalise(display: str) -> str:
    for k, ch in enumerate(display):
        if ch.isalpha():
            return display[:k] + ch.upper() + display[k + 1 :]
        if ch.isdigit():
            break
    return display


def format_words(tokens: Iterable[Token], fmt: Formatting) -> list[Word]:
    """Deepgram words for ``fmt`` (times are kept; expanded words share their token's span)."""
    words = [s for t in tokens for s in _expand(t)]
    if fmt.numerals:
        words = _numerals(words)
    if fmt.punctuate:  # a sentence starts with a capital, also where a number was spelled out
        for k, w in enumerate(words):
            if k == 0 or words[k - 1].display[-1:] in ".?!":
                w.display = _capitalise(w.display)
    return [
        Word(w.word, w.start, w.end, min(max(w.confidence, 0.0), 1.0), w.display if fmt.punctuate else None)
        for w in words
    ]
