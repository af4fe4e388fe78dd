"""Deepgram's wire vocabulary: query parameters, message shapes, encodings, credentials.

A leaf package: it imports nothing of streamproxy, so the gateway, the embedded engine and the
jobs routes share one definition of every Deepgram shape instead of typing it again.
"""
