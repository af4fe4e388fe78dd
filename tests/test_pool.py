"""``UpstreamPool``: where the next connection (live or prerecorded) goes, on an injected clock.

Ranking is health (circuit breaker), then "not the one that just failed us", then region (the
gateway's own before others), then priority, then consecutive failures, then load. A fake clock
makes the breaker's cooldown exact instead of slept.
"""

from __future__ import annotations

import pytest

from streamproxy.upstream.pool import Upstream, UpstreamPool


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(*specs: tuple[str, int], failures: int = 3, cooldown: float = 30.0) -> tuple[UpstreamPool, FakeClock]:
    clock = FakeClock()
    ups = [Upstream(name, f"ws://{name}.invalid", priority=prio) for name, prio in specs]
    return UpstreamPool(ups, breaker_failures=failures, breaker_cooldown_s=cooldown, clock=clock), clock


def names(p: UpstreamPool, avoid: str | None = None) -> list[str]:
    return [u.name for u in p.ranked(avoid)]


def test_priority_orders_healthy_upstreams_whatever_the_configuration_order() -> None:
    p, _ = pool(("backup", 2), ("main", 0), ("second", 1))
    assert names(p) == ["main", "second", "backup"]
    assert p.choose().name == "main"


def test_breaker_opens_after_n_consecutive_failures_and_closes_after_the_cooldown() -> None:
    """Fewer than N failures keep a better-priority upstream first; the Nth opens its breaker (it is
    skipped) for exactly the cooldown; after it the upstream is back in first place."""
    p, clock = pool(("main", 0), ("backup", 1), failures=3, cooldown=30.0)
    p.failure("main")
    p.failure("main")
    assert p.choose().name == "main"  # priority beats two failures
    p.failure("main")
    assert p.choose().name == "backup"
    assert names(p) == ["backup", "main"]  # still listed: the last resort
    clock.now += 29.999
    assert p.choose().name == "backup"
    clock.now += 0.001
    assert p.choose().name == "main"


def test_a_failure_after_the_cooldown_reopens_at_once_and_a_success_resets() -> None:
    """Half-open: the count is not reset by the cooldown, so one more failure opens the breaker
    again; only a success (the upstream answered) clears it."""
    p, clock = pool(("main", 0), ("backup", 1), failures=3, cooldown=10.0)
    for _ in range(3):
        p.failure("main")
    clock.now += 10.0
    p.failure("main")
    assert p.choose().name == "backup"
    clock.now += 10.0
    p.success("main")
    p.failure("main")
    assert p.choose().name == "main"  # one failure since the success: the breaker stays closed


def test_avoid_prefers_another_healthy_upstream_but_not_an_unhealthy_one() -> None:
    """A reconnect avoids the upstream that just failed it when another is healthy; when the others'
    breakers are open, the avoided (healthy) one is still better than none."""
    p, _ = pool(("main", 0), ("backup", 1), failures=1)
    assert p.choose(avoid="main").name == "backup"
    p.failure("backup")
    assert p.choose(avoid="main").name == "main"
    assert names(p, avoid="main") == ["main", "backup"]


def test_equal_priority_ties_go_to_fewer_failures_then_less_load() -> None:
    p, _ = pool(("a", 0), ("b", 0), ("c", 0), failures=5)
    assert p.choose().name == "a"  # all equal: configuration name order
    p.upstreams[0].active = 2
    p.upstreams[1].active = 1
    assert names(p) == ["c", "b", "a"]
    p.failure("c")
    assert names(p) == ["b", "a", "c"]  # a recent failure weighs more than load


def test_any_healthy_follows_the_breakers() -> None:
    p, clock = pool(("a", 0), ("b", 1), failures=1, cooldown=5.0)
    assert p.any_healthy()
    p.failure("a")
    assert p.any_healthy()
    p.failure("b")
    assert not p.any_healthy()
    clock.now += 5.0
    assert p.any_healthy()


def test_unknown_names_are_ignored_and_an_empty_pool_is_refused() -> None:
    p, _ = pool(("a", 0))
    p.failure("gone")
    p.success("gone")
    assert p.upstreams[0].failures == 0
    with pytest.raises(ValueError):
        UpstreamPool([])


def regional(region: str, *specs: tuple[str, int, str]) -> tuple[UpstreamPool, FakeClock]:
    clock = FakeClock()
    ups = [Upstream(n, f"ws://{n}.invalid", priority=prio, region=r) for n, prio, r in specs]
    return UpstreamPool(ups, breaker_failures=2, breaker_cooldown_s=30.0, clock=clock, region=region), clock


def test_own_region_first_whatever_the_priority_and_unlabelled_upstreams_count_as_local() -> None:
    """A gateway in eu ranks eu and unlabelled upstreams (the embedded engine) before us ones, even
    when the us one has the better priority; a gateway with no region keeps plain priority order."""
    specs = (("us-dg", 0, "us"), ("eu-dg", 1, "eu"), ("engine", 5, ""), ("us-dg2", 2, "us"))
    p, _ = regional("eu", *specs)
    assert names(p) == ["eu-dg", "engine", "us-dg", "us-dg2"]
    assert [p.remote(u) for u in p.ranked()] == [False, False, True, True]
    assert p.region_of("us-dg") == "us" and p.region_of("engine") == "" and p.region_of("nope") == ""
    p_any, _ = regional("", *specs)
    assert names(p_any) == ["us-dg", "eu-dg", "us-dg2", "engine"]


def test_fail_over_across_regions_only_when_the_region_has_nothing_healthy_left() -> None:
    """eu has two upstreams: a failed eu-a moves traffic to eu-b, not to us; with both eu breakers
    open the session crosses to us; after the cooldown eu is first again (new sessions come home)."""
    p, clock = regional("eu", ("eu-a", 0, "eu"), ("eu-b", 1, "eu"), ("us-a", 0, "us"))
    assert p.choose().name == "eu-a"
    assert p.choose(avoid="eu-a").name == "eu-b"
    for _ in range(2):
        p.failure("eu-a")
        p.failure("eu-b")
    assert p.choose().name == "us-a"
    assert names(p) == ["us-a", "eu-a", "eu-b"]
    clock.now += 30.0
    assert p.choose().name == "eu-a"


def test_the_region_that_just_failed_us_is_left_at_once_when_it_is_the_only_local_one() -> None:
    """One local upstream that just failed (breaker still closed): the retry goes to the other
    region rather than straight back; if the remote one is unhealthy the local one is retried."""
    p, _ = regional("eu", ("eu-a", 0, "eu"), ("us-a", 0, "us"))
    assert p.choose(avoid="eu-a").name == "us-a"
    p.failure("us-a")
    p.failure("us-a")
    assert p.choose(avoid="eu-a").name == "eu-a"
