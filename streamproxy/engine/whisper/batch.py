"""Utterance decoding on CTranslate2 directly: short windows, several streams' utterances per call.

faster-whisper's ``transcribe()`` pads every call to Whisper's 30 s window; for tiny.en int8 on one
core the encoder alone then costs ~260-370 ms whatever the utterance length, ~90 % of a live decode.
CTranslate2's encoder takes shorter features (its cost grows faster than linearly with the
window: 15 s costs ~57 ms), so an utterance is decoded in a window of at least :data:`MIN_WINDOW_S`
and at least its own length plus :data:`MARGIN_S` of trailing padding, rounded up to a
:data:`BUCKET_S` multiple. Shorter windows make Whisper loop on short utterances (it repeats
"ten of clubs" to fill a window it believes unfinished: 75 % WER on the real-speech set with
utterance + 2 s windows, 17.5 % with 10 s, 7.9 % with 15 s, 8.8 % with 30 s).

Utterances whose windows have the same length are decoded as one batch: each is encoded on its
own (a batched encode costs more per item on CPU at these lengths), then one ``generate`` and one
``align`` call serve them all; the decoder steps are what batching saves.
CTranslate2 needs the start-of-transcript token at one position in a batch, so a batch also shares
its prompt length (the previous-text context, if any). Because a batch never pads one item to
another's length and every item has its own prompt, an utterance's words do not depend on what
else was in its batch (int8 GEMMs over several rows are not bit-identical to one row, so word
probabilities and, by one 20 ms step, word times can).
Word timings reuse faster-whisper's own alignment (``add_word_timestamps``), as ``transcribe()``
does.
"""

from __future__ import annotations

import inspect
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BUCKET_S", "MARGIN_S", "MIN_WINDOW_S", "DecodedUtterance", "DecodedWord", "UtteranceDecoder", "Window"]

MIN_WINDOW_S = 15.0  # shorter windows make Whisper repeat short utterances (see above)
MARGIN_S = 2.0  # trailing padding after a long utterance; less makes Whisper repeat itself
BUCKET_S = 2.0  # longer windows are multiples of this, so utterances of similar length share a batch
_FRAMES_PER_S = 100  # Whisper's mel frames per second (hop 160 at 16 kHz)
_MAX_FRAMES = 3000  # Whisper's 30 s window
_MAX_INITIAL_TIMESTAMP_S = 1.0  # faster-whisper's default
_TOKENS_PER_S = 10  # a generous cap on text + timestamp tokens per second of audio, against loops


@dataclass(frozen=True, slots=True)
class DecodedWord:
    """One word as Whisper returned it, before it becomes a Deepgram word."""

    text: str  # as Whisper wrote it, leading space stripped (" Hello," -> "Hello,")
    start: float  # seconds from the start of the decoded audio
    end: float
    probability: float


@dataclass(frozen=True, slots=True)
class DecodedUtterance:
    """What one decode returned: the words and Whisper's own confidence signals for gating."""

    words: list[DecodedWord]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    window_s: float  # the decoded window (utterance + margin, rounded up)


@dataclass(slots=True)
class Window:
    """One utterance's features, ready to batch with others of the same ``frames``."""

    features: np.ndarray  # float32 [n_mels, frames]
    content_frames: int  # frames of real audio; the rest is padding
    prompt: list[int]  # decoder prompt: previous text tokens (if any), then the start sequence
    key: tuple[int, int] = field(init=False)  # what a batch shares: window frames, prompt length

    def __post_init__(self) -> None:
        self.key = (int(self.features.shape[-1]), len(self.prompt))


def window_frames(content_frames: int) -> int:
    """Window length for ``content_frames`` of audio: + margin, rounded up to a bucket, 15..30 s."""
    bucket = round(BUCKET_S * _FRAMES_PER_S)
    want = content_frames + round(MARGIN_S * _FRAMES_PER_S)
    return min(_MAX_FRAMES, max(round(MIN_WINDOW_S * _FRAMES_PER_S), math.ceil(want / bucket) * bucket))


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class UtteranceDecoder:
    """Batched utterance decoding with one loaded faster-whisper ``WhisperModel`` (thread-safe)."""

    def __init__(self, model: Any, *, beam_size: int = 1) -> None:
        from faster_whisper.tokenizer import Tokenizer

        self.model = model
        self.beam_size = max(1, beam_size)
        multilingual = bool(model.model.is_multilingual)
        # English engine: a multilingual model (base) is told the language instead of detecting it
        # on every short utterance.
        self.tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe", language="en")
        # Which punctuation sticks to the next / previous word: transcribe()'s own defaults.
        params = inspect.signature(type(model).transcribe).parameters
        self._punctuation = (str(params["prepend_punctuations"].default), str(params["append_punctuations"].default))

    def window(self, audio: np.ndarray, prompt: str | None = None) -> Window:
        """Features of one utterance (float32, 16 kHz) in its window; CPU work off the decode slot."""
        fe = self.model.feature_extractor
        content = min(audio.size // fe.hop_length, _MAX_FRAMES)
        feats = fe(audio)[:, :content]  # padded with zeros after, like faster-whisper's pad_or_trim
        frames = window_frames(content)
        out = np.zeros((feats.shape[0], frames), dtype=np.float32)
        out[:, :content] = feats
        return Window(out, content, self._prompt(prompt))

    def _prompt(self, text: str | None) -> list[int]:
        previous = self.tokenizer.encode(" " + text.strip()) if text and text.strip() else []
        return list(self.model.get_prompt(self.tokenizer, previous, without_timestamps=False))

    def decode(self, windows: list[Window]) -> list[DecodedUtterance]:
        """Decode windows of one :attr:`Window.key` in one batch (blocking; holds a CTranslate2 worker)."""
        if not windows:
            return []
        if any(w.key != windows[0].key for w in windows):
            raise ValueError("a batch holds windows of one length and prompt length only")
        import ctranslate2

        m, tok = self.model, self.tokenizer
        if len(windows) == 1:
            encoded = m.model.encode(ctranslate2.StorageView.from_array(windows[0].features[None]))
        else:
            parts = [np.asarray(m.model.encode(ctranslate2.StorageView.from_array(w.features[None]))) for w in windows]
            encoded = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.concatenate(parts)))
        prompts = [w.prompt for w in windows]
        longest = max(w.content_frames for w in windows) / _FRAMES_PER_S
        max_length = min(m.max_length, max(len(p) for p in prompts) + 16 + math.ceil(_TOKENS_PER_S * longest))
        results = m.model.generate(
            encoded,
            prompts,
            beam_size=self.beam_size,
            patience=1.0,
            length_penalty=1.0,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
            max_initial_timestamp_index=round(_MAX_INITIAL_TIMESTAMP_S / m.time_precision),
        )
        segments: list[list[dict[str, Any]]] = []
        stats: list[tuple[str, float, float]] = []
        for w, r in zip(windows, results, strict=True):
            tokens = list(r.sequences_ids[0])
            stamps = [t - tok.timestamp_begin for t in tokens if t >= tok.timestamp_begin]
            duration = w.content_frames / _FRAMES_PER_S
            start = stamps[0] * m.time_precision if stamps else 0.0
            end = stamps[-1] * m.time_precision if len(stamps) > 1 else duration
            text = tok.decode([t for t in tokens if t < tok.eot]).strip()
            # One segment per utterance (no re-decode of an "unfinished" tail, as transcribe() would).
            segments.append([{"seek": 0, "start": start, "end": max(end, start), "tokens": tokens, "text": text}])
            avg = r.scores[0] * len(tokens) / (len(tokens) + 1) if tokens else 0.0
            stats.append((text, float(avg), float(r.no_speech_prob)))
        if any(any(t < tok.eot for t in s[0]["tokens"]) for s in segments):
            m.add_word_timestamps(
                segments,
                tok,
                encoded,
                [w.content_frames for w in windows],
                self._punctuation[0],
                self._punctuation[1],
                0.0,
            )
        out = []
        for w, seg, (text, avg, nsp) in zip(windows, segments, stats, strict=True):
            words = [
                DecodedWord(str(x["word"]).strip(), float(x["start"]), float(x["end"]), float(x["probability"]))
                for x in seg[0].get("words", ())
                if str(x["word"]).strip()
            ]
            out.append(DecodedUtterance(words, text, avg, nsp, _compression_ratio(text), w.key[0] / _FRAMES_PER_S))
        return out
