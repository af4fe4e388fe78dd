"""The embedded engine: a recognizer process speaking Deepgram's ``/v1/listen`` on loopback.

``app`` (the process), ``live`` and ``prerecorded`` (the two routes), ``options`` (query →
recognizer options), ``handshake`` (request id, credentials, refusals), ``state``, ``kinds``
(marker, pocketsphinx, whisper), ``dsp`` (PCM decoding and resampling), the recognizers
(``marker``, ``sphinx``, the ``whisper`` package) and their contract ``recognizer``; ``supervisor``
and ``launch`` run engine processes for ``serve`` and ``worker``.
"""
