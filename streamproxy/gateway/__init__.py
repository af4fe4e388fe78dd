"""The gateway process: its state, and the whole life of every streaming session in it.

``state.Gateway`` is built once by ``serve`` and handed to every handler; ``admission`` decides
who may open a session; ``registry`` knows every live and resumable session; ``runner`` drives
one session's sans-I/O core and is the only way a session ends (``SessionRunner.shutdown``).
"""
