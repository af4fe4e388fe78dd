"""``RingBuffer``: the unacknowledged audio (and the controls between it) a new upstream is replayed.

What the session's no-loss guarantee rests on: release frees exactly what a final acknowledged,
a Finalize stays until its own answer came, overflow drops only the oldest audio (counted, never a
control), never half a sample, and replay is the held audio from ``start``, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.deepgram.messages import FINALIZE
from streamproxy.session.ring import Item, RingBuffer


def audio(pos: int, n: int) -> bytes:
    """``n`` bytes whose values say where they are in the stream, so misplaced bytes show."""
    return bytes((pos + i) % 251 for i in range(n))


def replayed(ring: RingBuffer) -> list[tuple[int, bytes | str]]:
    return [(i.pos, i.data if i.data is not None else i.control or "") for i in ring.replay()]


def held_audio(ring: RingBuffer) -> bytes:
    return b"".join(i.data for i in ring.replay() if i.data is not None)


def test_append_release_replay() -> None:
    """release(ack) frees the audio before ack (cutting into a frame), replay starts exactly there."""
    ring = RingBuffer(10_000)
    for pos in (0, 100, 200):
        assert ring.append_audio(pos, audio(pos, 100)) == 0
    assert (ring.start, ring.end, ring.nbytes, len(ring)) == (0, 300, 300, 3)
    assert ring.release(150) == 150
    assert (ring.start, ring.nbytes) == (150, 150)
    assert replayed(ring) == [(150, audio(150, 50)), (200, audio(200, 100))]
    assert ring.release(100) == 0  # an older acknowledgement frees nothing more
    assert ring.start == 150
    assert ring.release(300) == 150
    assert (ring.start, ring.nbytes, len(ring)) == (300, 0, 0)
    assert ring.dropped_bytes == 0  # released is not dropped


def test_a_finalize_is_kept_until_answered_even_when_the_audio_around_it_is_acknowledged() -> None:
    """A Finalize whose answer has not come must be replayed to the next upstream, even though a
    final acknowledged the audio after it; its answer (answered=1) releases it."""
    ring = RingBuffer(10_000)
    ring.append_audio(0, audio(0, 100))
    ring.append_control(100, FINALIZE)
    ring.append_audio(100, audio(100, 100))
    assert ring.release(200) == 200
    assert replayed(ring) == [(100, FINALIZE)]
    ring.append_audio(200, audio(200, 50))
    assert replayed(ring) == [(100, FINALIZE), (200, audio(200, 50))]
    ring.release(220, answered=1)
    assert replayed(ring) == [(220, audio(220, 30))]


def test_an_answer_releases_a_finalize_behind_audio_still_held() -> None:
    """The answer can come before the audio ahead of the Finalize is acknowledged (the watermark is the
    minimum over channels): the control goes, the audio stays."""
    ring = RingBuffer(10_000)
    ring.append_audio(0, audio(0, 100))
    ring.append_control(100, FINALIZE)
    ring.append_audio(100, audio(100, 100))
    ring.release(50, answered=1)
    assert replayed(ring) == [(50, audio(50, 50)), (100, audio(100, 100))]


def test_overflow_drops_the_oldest_audio_and_keeps_pending_controls() -> None:
    """Past capacity the head audio goes (returned and counted) and the start moves; a Finalize in
    the dropped stretch stays, at the head, because the client is still owed its final."""
    ring = RingBuffer(300)
    ring.append_audio(0, audio(0, 100))
    ring.append_audio(100, audio(100, 100))
    ring.append_control(200, FINALIZE)
    ring.append_audio(200, audio(200, 100))
    assert ring.append_audio(300, audio(300, 100)) == 100
    assert (ring.start, ring.nbytes, ring.dropped_bytes) == (100, 300, 100)
    assert replayed(ring) == [(100, audio(100, 100)), (200, FINALIZE), (200, audio(200, 100)), (300, audio(300, 100))]
    assert ring.append_audio(400, audio(400, 150)) == 150  # drops past the Finalize's position
    assert (ring.start, ring.nbytes, ring.dropped_bytes) == (250, 300, 250)
    assert replayed(ring) == [(200, FINALIZE), (250, audio(250, 50)), (300, audio(300, 100)), (400, audio(400, 150))]
    assert held_audio(ring) == audio(250, 300)


def test_overflow_never_splits_a_sample_frame() -> None:
    """With 2-byte samples (or 4-byte stereo frames) the drop is rounded up to whole frames: the
    replay must start on a sample boundary or every later sample would be garbage."""
    for align in (2, 4):
        ring = RingBuffer(100)
        ring.append_audio(0, audio(0, 60), align=align)
        dropped = ring.append_audio(60, audio(60, 44), align=align)  # 4 bytes too many
        assert dropped == 4 and ring.start == 4
        dropped = ring.append_audio(104, audio(104, 2), align=align)  # 2 too many
        assert dropped == align and ring.start % align == 0
        assert ring.nbytes <= 100
        assert held_audio(ring) == audio(ring.start, ring.nbytes)


# ----------------------------------------------------------------------------- property
@dataclass
class Append:
    frames: int  # size in sample frames


@dataclass
class Control:
    pass


@dataclass
class Release:
    fraction: float  # where between start and end the acknowledgement falls
    answered: int


ops = st.lists(
    st.one_of(
        st.builds(Append, st.integers(1, 120)),
        st.builds(Control),
        st.builds(Release, st.floats(0.0, 1.0), st.integers(0, 1)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 400), st.sampled_from([1, 2, 4]), ops)
def test_bound_and_replay_hold_for_any_sequence(capacity_frames: int, align: int, script: list) -> None:
    """Any sequence of appends, Finalizes and releases (answered or not): the bytes held never exceed
    the capacity, the replay's audio is exactly the stream from ``start`` to the end, in order and
    contiguous, the controls are the unanswered ones in order, and every byte appended is either held,
    released or counted as dropped."""
    capacity = capacity_frames * align
    ring = RingBuffer(capacity)
    stream = b""
    pending: list[int] = []  # positions of unanswered controls, oldest first
    released = 0
    for op in script:
        if isinstance(op, Append):
            data = audio(len(stream), op.frames * align)
            dropped = ring.append_audio(len(stream), data, align=align)
            assert dropped % align == 0
            stream += data
        elif isinstance(op, Control):
            ring.append_control(len(stream), FINALIZE)
            pending.append(len(stream))
        else:
            ack = ring.start + int(op.fraction * ring.nbytes)
            ack -= ack % align
            answered = min(op.answered, len(pending))
            released += ring.release(ack, answered)
            del pending[:answered]
        assert ring.nbytes <= capacity
        assert ring.start % align == 0
        items: list[Item] = list(ring.replay())
        audio_items = [i for i in items if i.data is not None]
        assert b"".join(i.data for i in audio_items if i.data is not None) == stream[ring.start :]
        assert ring.nbytes == len(stream) - ring.start
        pos = ring.start
        for i in audio_items:  # contiguous from start
            assert i.pos == pos
            pos = i.end
        assert [i.pos for i in items if i.data is None] == pending
        assert released + ring.dropped_bytes + ring.nbytes == len(stream)
