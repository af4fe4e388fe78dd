"""Streaming transcription gateway speaking the Deepgram protocol."""

__version__ = "0.1.0"
