"""Client credentials: the key file, grant tokens, and who may call (no HTTP framework here)."""
