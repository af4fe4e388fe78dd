"""Twilio Media Streams input (``GET /v1/twilio``) and transcript delivery to subscribers.

Each Twilio stream becomes an ordinary streaming session (the same ``Session`` + ``SessionRunner``
as ``/v1/listen``); its client is a :class:`HubClient` that publishes what the session would send
to a socket into an :class:`EventHub` instead. Subscribers read the hub as Server-Sent Events at
``GET /v1/sessions/{id}/events`` (id = ``streamSid`` or ``callSid``) and/or receive finals at a
webhook (``callback``).

Audio: Twilio sends 20 ms frames of base64 μ-law at 8 kHz. They are decoded to linear16 and
upsampled to 16 kHz by sample repetition (zero-order hold) before the session sees them, so any
engine works (the pocketsphinx engine accepts only 16 kHz). Zero-order hold keeps a constant run
constant and maps 8 kHz sample ``i`` to 16 kHz samples ``2i, 2i+1``: every timestamp is exactly
the 8 kHz one. (Measured on espeak speech through pocketsphinx: hold and linear interpolation give
the same WER, ~0.8; a band-limited resampler was worse, ~0.96, because the wideband model expects
energy above 4 kHz.) Positions follow the media ``timestamp`` (ms from the stream start): a gap is
filled with silence, re-sent audio that overlaps what was already placed is trimmed.

Twilio strips query strings from ``<Stream url>``; options come from ``<Parameter>`` elements
(``customParameters`` in the ``start`` event): ``token`` (client key, when keys are configured),
``callback`` (webhook URL), ``proxy_events``, and any Deepgram Live option (``model``,
``language``, ``interim_results`` ...). The same names in the query string work for other senders.
"""
