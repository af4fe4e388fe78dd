"""Who may open a streaming session: one decision for every streaming route (``/v1/listen``,
``/v1/twilio``, and any protocol added beside them).

In order: a draining instance refuses (503), then the process-wide ``limits.max_sessions`` (429),
the browser ``Origin`` allow-list (403), and for a new session with a known caller the per-key
concurrency and rate limits (429). An admitted caller holds a :class:`Lease` on its per-key slot
until the session it opens ends (the session may outlive the request while it waits to be resumed).
"""

from __future__ import annotations

import logging

from ..auth.authenticator import Principal
from .limits import Lease, Refusal
from .state import Gateway

log = logging.getLogger("streamproxy.limits")


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


DRAINING = Refusal(503, "Server is draining; reconnect to another instance.")


async def admit(
    gw: Gateway,
    *,
    principal: Principal | None,
    session_id: str,
    origin: str | None = None,
    new: bool = True,
) -> Lease:
    """A lease for the caller's session, or :class:`Refused` saying why not.

    ``principal=None`` checks only what does not depend on the caller (Twilio's handshake, before
    its ``start`` event names the key); ``new=False`` is a resume, which takes no new slot.
    """
    refusal: Refusal | None = None
    if gw.draining:
        refusal = DRAINING
    elif new and len(gw.sessions) >= gw.cfg.limits.max_sessions:
        refusal = Refusal(429, "Too many concurrent sessions.", 1)
    else:
        refusal = gw.limiter.check_origin(origin)
    if refusal is None and new and principal is not None:
        refusal = await gw.limiter.open_session(principal.id, session_id)
        if refusal is None:
            return Lease(gw.limiter, principal.id, session_id)
    if refusal is not None:
        log.info(
            "session refused",
            extra={"event": "session_refused", "status": refusal.status, "reason": refusal.message},
        )
        raise Refused(refusal)
    return Lease(None, "", session_id, released=True)
