"""Outbound HTTP to user-given URLs: fetching audio and delivering webhooks, safe against SSRF."""
