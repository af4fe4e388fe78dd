"""bullmq's Worker with Node BullMQ's ``fetchNext``: completing a job fetches the next one.

bullmq for Python completes a job (``moveToFinished``) and then asks for the next one
(``moveToActive``): two scripts and two round trips per job on the worker's one connection, which
every job of the process shares. The ``moveToFinished`` script can return the next job itself (its
``fetchNext`` argument, what Node's worker passes); Python's ``processJob`` passes False. This
subclass passes True and runs the fetched job next in the same concurrency slot: one round trip
per job on a busy queue. Locks, stalled-job recovery and failure handling are bullmq's, unchanged.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from bullmq import Job, UnrecoverableError, Worker
from bullmq.custom_errors import DelayedError, WaitingChildrenError

__all__ = ["FetchNextWorker"]


def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class FetchNextWorker(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The internals this relies on, as bullmq 3.x has them; anything else runs bullmq's own
        # processJob (one fetch per job) rather than fail jobs on a changed signature.
        lm, backend = getattr(self, "lockManager", None), getattr(self, "backend", None)
        self.fetch_next = (
            _accepts(getattr(lm, "track_job", None), "should_create_controller")
            and _accepts(getattr(backend, "moveToCompleted", None), "fetch_next")
            and callable(getattr(self, "nextJobFromJobData", None))
        )

    async def processJob(self, job: Job, token: str) -> None:
        """Run ``job``, then each job its completion fetched, in this task (one concurrency slot).

        In the slot's own task rather than handed back to the run loop: close() and pause() await
        the tasks running when they are called, so a job fetched meanwhile is finished here, not
        left locked in ``active`` until the stalled check.
        """
        if not self.fetch_next:
            await super().processJob(job, token)
            return
        following: Job | None = job
        while following is not None:
            following = await self._process_one(following, token)

    async def _process_one(self, job: Job, token: str) -> Job | None:
        """bullmq's ``processJob`` (3.x), except that completing fetches and returns the next job."""
        following: Job | None = None
        try:
            for opt in ("removeOnComplete", "removeOnFail"):
                if opt not in job.opts and opt in self.opts:
                    job.opts[opt] = self.opts[opt]
            self.jobs.add((job, token))
            self.lockManager.track_job(job.id, token, int(time.time() * 1000), should_create_controller=False)
            if job.deferredFailure:
                await job.moveToFailed(UnrecoverableError(job.deferredFailure), token)
                self.emit("failed", job, UnrecoverableError(job.deferredFailure))
                return None
            result = await self.processor(job, token)
            if not self.forceClosing:
                fetch = not (self.closing or self.paused)
                done: Any = await self.backend.moveToCompleted(
                    job, result, job.opts.get("removeOnComplete", False), token, fetch_next=fetch
                )
                job.returnvalue = result
                job.attemptsMade = job.attemptsMade + 1
                # [job data, id, rate limited until, next delayed at]; all None on an empty queue.
                nxt = done.get("result") if isinstance(done, dict) else None
                if fetch and nxt and any(v is not None for v in nxt):
                    data, next_id, limit_until, delay_until = nxt
                    # Locked with this token (as Node's worker does); the limits update the worker's.
                    following = await self.nextJobFromJobData(
                        data, next_id, int(limit_until or 0), int(delay_until or 0), token
                    )
                    if following is not None:
                        self.emit("active", following, "waiting")
            self.emit("completed", job, result)
        except (DelayedError, WaitingChildrenError):
            return None
        except Exception as err:
            try:
                if not self.forceClosing:
                    await job.moveToFailed(err, token)
                self.emit("failed", job, err)
            except Exception as err2:
                self.emit("error", err2, job)
        finally:
            self.jobs.discard((job, token))
            self.lockManager.untrack_job(job.id)
        return following
