"""One command budget for a tclet's whole interpreter tree, in-process with real Tcl.

Each interpreter of a scenario does its work in units (``work``: ``time {f} 500``, then one
``.`` on stdout), taking turns as the scenario says, until the budget stops the tree. A unit runs
502 commands, so the dots printed bound from below what the tree really ran, whatever the
books say: at most ``budget / 502`` units (plus a small overshoot) may complete, and nearly
all of them must (the budget is usable, not cut short). Giving every interpreter the whole
remainder, as the runtime once did, let 20 children created first and then each running
``time {f} 90000`` run 1.8 million commands on a budget of 100,000 and exit 0.
"""

from __future__ import annotations

import pytest
from support.runtime import NoSocketLink, run_script, runtime

pytestmark = pytest.mark.timeout(60)

BUDGET = 100_000
UNIT = 502  # commands a `work` runs: time, 500 calls of f, puts
MAX_UNITS = BUDGET // UNIT + 1  # the unit Tcl's limit check lets finish, at most
MIN_UNITS = BUDGET * 9 // 10 // UNIT  # the scenarios' own bookkeeping stays under a tenth

# Defines `f` and `work` in the interpreter it is evaluated in (a few commands, counted too).
WORK = "proc f {} {}; proc work {} {time {f} 500; puts -nonewline .}"


SCENARIOS = {
    # finding 3's shape, in small units: children created first, then taking turns
    "children in turn": f"""
        set cs {{}}
        for {{set k 0}} {{$k < 20}} {{incr k}} {{
            set c [interp create]
            interp share {{}} stdout $c
            $c eval {{{WORK}}}
            lappend cs $c
        }}
        while 1 {{foreach c $cs {{$c eval work}}}}
    """,
    # chains five deep; every interpreter of every chain takes its turn, deepest first
    "nested": f"""
        set paths {{}}
        for {{set k 0}} {{$k < 4}} {{incr k}} {{
            set p [interp create]
            for {{set d 0}} {{$d < 5}} {{incr d}} {{
                interp share {{}} stdout $p
                interp eval $p {{{WORK}}}
                set paths [linsert $paths 0 $p]
                lappend p [interp eval $p interp create]
            }}
        }}
        while 1 {{foreach p $paths {{interp eval $p work}}}}
    """,
    # a child created, used and deleted in a loop, interleaved with a child that stays
    "create and delete": f"""
        interp create keep
        interp share {{}} stdout keep
        keep eval {{{WORK}}}
        while 1 {{
            set c [interp create]
            interp share {{}} stdout $c
            $c eval {{{WORK}}}
            $c eval work
            keep eval work
            interp delete $c
        }}
    """,
    # children made every other way: an alias, `interp eval`, from inside a child, the child's
    # own command, and the tclet working itself
    "created every way": f"""
        {WORK}
        interp alias {{}} mk {{}} interp create
        set cs [list [mk] [interp eval {{}} interp create]]
        set c [interp create]
        lappend cs $c [list $c [$c eval interp create]] [list $c [$c eval {{interp create}}]]
        interp alias $c mkin {{}} interp create
        lappend cs [$c eval mkin]
        foreach p $cs {{interp share {{}} stdout $p; interp eval $p {{{WORK}}}}}
        lappend cs {{}}
        while 1 {{foreach p $cs {{interp eval $p work}}}}
    """,
    # the same turns, with `while` and `after` loops in the children instead of the tclet's
    "loops in children": f"""
        set cs {{}}
        for {{set k 0}} {{$k < 10}} {{incr k}} {{
            set c [interp create]
            interp share {{}} stdout $c
            $c eval {{{WORK}}}
            $c eval {{proc again {{}} {{work; after 0 again}}}}
            lappend cs $c
        }}
        foreach c $cs {{$c eval {{after 0 again}}}}
        while 1 {{foreach c $cs {{$c eval {{set i 0; while {{$i < 2}} {{work; incr i}}}}}}; update}}
    """,
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_tree_shares_one_budget(scenario: str, capfd: pytest.CaptureFixture[str]) -> None:
    status, link = run_script(SCENARIOS[scenario], commands=BUDGET)
    out = capfd.readouterr().out
    units = out.count(".")
    print(f"{scenario}: {units} units of {UNIT} commands on a budget of {BUDGET}")
    assert status == 137, out
    assert link.limits == [("commands", f"commands limit {BUDGET}")]
    assert MIN_UNITS <= units <= MAX_UNITS, (units, MIN_UNITS, MAX_UNITS)


def test_finding_3_children_created_first(capfd: pytest.CaptureFixture[str]) -> None:
    """20 children created first, then each running ``time {f} 90000``: at most one of them
    finishes on a budget of 100,000."""
    status, link = run_script(
        """
        set cs {}
        for {set k 0} {$k < 20} {incr k} {lappend cs [interp create]}
        foreach c $cs {interp share {} stdout $c}
        foreach c $cs {$c eval {proc f {} {}; time {f} 90000; puts -nonewline X}}
        puts done
        """,
        commands=BUDGET,
    )
    out = capfd.readouterr().out
    assert status == 137, out
    assert link.limits == [("commands", f"commands limit {BUDGET}")]
    assert out == "X"


def test_a_child_inherits_no_budget_of_a_deleted_sibling(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """What a deleted child ran stays spent: a new child gets only what is left."""
    status, link = run_script(
        f"""
        interp create a
        interp create b
        interp share {{}} stdout a
        interp share {{}} stdout b
        a eval {{{WORK}; time work 150}}
        interp delete a
        puts -nonewline |
        b eval {{{WORK}; time work 150}}
        """,
        commands=BUDGET,
    )
    out = capfd.readouterr().out
    assert status == 137, out
    assert link.limits
    first, _, second = out.partition("|")
    assert len(first) == 150 and len(first) + len(second) <= MAX_UNITS, out


def test_turn_taking_costs_no_callback_per_call(capfd: pytest.CaptureFixture[str]) -> None:
    """A tclet calling into a child and back, 100,000 times (about 400,000 commands) on a
    budget of 500,000: the books are dealt again once or twice, not at every turn (giving the
    whole remainder to the interpreter whose limit fired, and none to the others, took 11,117
    limit callbacks here)."""
    calls: list[str] = []
    script = "interp create c\nfor {set i 0} {$i < 100000} {incr i} {c eval {incr x; incr y}}"
    rt = runtime(script + "\nputs ok", NoSocketLink(), commands=500_000)
    rt.tk.eval("rename ::tcletd::OnLimit ::tcletd::OnLimitReal")
    rt.tk.createcommand("::tcletd::Counted", calls.append)
    rt.tk.eval(
        "proc ::tcletd::OnLimit {path} {::tcletd::Counted $path; ::tcletd::OnLimitReal $path}"
    )
    assert rt.run() == 0
    assert capfd.readouterr().out == "ok\n"
    print(f"limit callbacks for 100,000 calls into a child: {len(calls)}")
    assert 0 < len(calls) < 50
