"""Files through the gateway: sync route, hybrid router, BullMQ job queue, workers, webhooks.

See :mod:`streamproxy.jobs.queue` for the job schema shared with foreign (e.g. Node) producers.
"""
