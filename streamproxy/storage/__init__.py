"""Stored transcripts: every streaming session's finals and every file job's result.

``writer.TranscriptWriter`` takes records off the session path and writes them in batches in the
background; ``sqlite.SqliteStore`` (the embedded default, a file in the data dir) and
``postgres.PostgresStore`` (shared) keep them, with versioned schema migrations
(``migrations.py``); ``shape.py`` answers them in Deepgram's prerecorded shape.
"""
