"""The ``whisper`` engine kind: faster-whisper (CTranslate2, int8) gated by the Silero VAD.

Whisper is not a streaming model: one call decodes a whole 30 s window (~0.5-1 s of CPU for
tiny.en, whatever the audio length), so streaming is utterance-level (:mod:`.recognizer`) and
decodes are a shared, bounded resource of the process (:mod:`.pool`). :mod:`.model` finds the
weights without network, :mod:`.words` turns Whisper's words into Deepgram's, and :mod:`.files`
decodes whole files. Importing this package loads nothing heavy: faster-whisper, the VAD and PyAV
are imported when a pool or resampler is first built.
"""
