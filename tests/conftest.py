"""Test-wide isolation: no test reads the developer's own data dir (keys, token secret, Redis)."""

from __future__ import annotations

import os
import tempfile

# Set before any test imports streamproxy: in-process gateways without server.data_dir resolve
# ~/.local/share/streamproxy, which may hold real keys on a developer's machine.
_home = tempfile.mkdtemp(prefix="streamproxy-test-data-")
os.environ["XDG_DATA_HOME"] = _home
os.environ.pop("STATE_DIRECTORY", None)
os.environ.pop("DEEPGRAM_API_KEY", None)
