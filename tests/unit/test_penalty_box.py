"""The penalty box itself (tcletd.host.watchdog.PenaltyBox): which site it holds, for how long,
and how often a boxed site may launch; sites as origins name them."""

from __future__ import annotations

import pytest

from tcletd.api import Host
from tcletd.host.watchdog import PENALTY_LAUNCH, PenaltyBox, PenaltyHeld
from tcletd.policy.addresses import Origin


def test_the_box_holds_a_site_until_seconds_after_its_last_offence() -> None:
    box = PenaltyBox(seconds=10.0)
    assert box.holds("http://a:80", 0.0) == 0.0
    assert box.offend("http://a:80", 0.0) is True  # enters
    assert box.holds("http://a:80", 4.0) == 6.0
    assert box.offend("http://a:80", 5.0) is False  # already in: kept longer
    assert box.holds("http://a:80", 14.0) == 1.0
    assert box.holds("http://b:80", 14.0) == 0.0
    assert box.holds("http://a:80", 15.0) == 0.0
    assert len(box) == 0  # an expired site is forgotten


def test_the_box_forgets_the_least_recent_offender_beyond_its_capacity() -> None:
    box = PenaltyBox(seconds=10.0, capacity=2)
    box.offend("a", 0.0)
    box.offend("b", 1.0)
    box.offend("a", 2.0)  # a is now the most recent
    box.offend("c", 3.0)
    assert len(box) == 2
    assert (box.holds("a", 3.0), box.holds("b", 3.0), box.holds("c", 3.0)) == (9.0, 0.0, 10.0)


def test_a_box_of_zero_seconds_holds_nobody() -> None:
    box = PenaltyBox(seconds=0.0)
    assert box.offend("a", 0.0) is False
    assert box.holds("a", 0.0) == 0.0


def test_a_boxed_site_launches_at_most_once_per_interval() -> None:
    box = PenaltyBox(seconds=10.0)
    for t in (0.0, 0.1, 0.2):
        box.admit_launch("a", t)  # not boxed: never refused, nothing counted
    box.offend("a", 1.0)
    box.admit_launch("a", 1.0)
    with pytest.raises(PenaltyHeld) as info:
        box.admit_launch("a", 1.0 + PENALTY_LAUNCH / 4)
    assert info.value.site == "a"
    assert info.value.wait == pytest.approx(PENALTY_LAUNCH * 3 / 4)
    assert str(info.value) == (
        "too many tclets from a while it is in the penalty box (limit 1 per 1 s; next in 0.8 s)"
    )
    box.admit_launch("b", 1.1)  # another site: not boxed
    box.admit_launch("a", 1.0 + PENALTY_LAUNCH)  # the refusal counted nothing
    with pytest.raises(PenaltyHeld):
        box.admit_launch("a", 1.0 + PENALTY_LAUNCH * 1.5)
    box.admit_launch("a", 11.0)  # out of the box: no throttle
    box.admit_launch("a", 11.0)


def test_a_site_is_scheme_host_and_port() -> None:
    assert Origin.parse("http://Example.COM/a/b/page.tcl?x=1").site == "http://example.com:80"
    assert Origin.parse("https://127.0.0.1:8443/").site == "https://127.0.0.1:8443"
    assert Origin.parse("http://[::1]:81/x").site == "http://[::1]:81"
    assert Origin.parse("file:///home/u/t.tcl?x#y").site == "file:///home/u/t.tcl"
    assert Origin.parse("file:///home/u/other.tcl").site == "file:///home/u/other.tcl"
    assert Origin.parse(None).site == Origin.parse("not a url").site == "UNKNOWN originURL"


def test_a_negative_penalty_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"penalty.*-1"):
        Host(penalty=-1)
