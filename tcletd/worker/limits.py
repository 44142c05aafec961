"""The tclet's Tcl command budget and the worker's heartbeat: master-side Tcl procs, and the
hook in Tcl's notifier that tells a resting tclet's wake (:class:`WakeDetector`).

Worker side of the trust boundary; everything here runs in the worker's master interpreter and
reads the tclet's interpreters only through commands the tclet cannot redefine.

**Command budget** (``spec.commands``): the tclet and every interpreter it creates share one
budget of commands, counted as ``info cmdcount`` counts them, from the start of its script.
Tcl's own ``interp limit ... commands`` enforces it; that is per interpreter, and Tcl gives a
child of a limited interpreter a limit of 0 (it could not run a single command), so the master
keeps the books (facts checked on 8.6.13):

- Every interpreter of the tree has a limit of (its count + its share of what the tree has
  left), and the shares add up to no more than what is left, so however the tree's interpreters
  take turns, the tree cannot run more than its budget (give or take what Tcl runs between two
  limit checks, a few commands per interpreter). Giving each interpreter the whole remainder
  instead let 20 children created first, then each running ``time {f} 90000``, run 1.8 million
  commands on a budget of 100,000. The books are brought up to date and the shares dealt again
  (:tcl:`::tcletd::Tighten`) when a child is created or deleted, at every heartbeat, and when any
  interpreter reaches its limit. Its ``-command`` callback (:tcl:`::tcletd::OnLimit`) then
  either gives that interpreter half of what is left (the others share the other half, so an
  interpreter running a long loop asks again about log2(budget) times, and a tclet calling into
  a child and back does not pay a callback per call), or, nothing being left, lets the limit
  stand and tells the runtime (``::tcletd::py::limit``). A standing limit throws an error that
  no ``catch`` in the tclet can intercept, and every later eval fails.
- Counts are read with a *hidden* copy of ``::tcl::info::cmdcount`` (``tcletd_cmdcount``): a
  tclet can redefine ``info`` but not a hidden command, so it cannot lie about its count. Its own
  ``info cmdcount`` still works, through an alias.
- A tclet may not change limits: ``interp limit`` is refused by the ``interp`` alias, and each
  child's own command (``$child limit``) is replaced by an alias (:tcl:`::tcletd::ChildCmd`)
  that refuses ``limit`` and forwards everything else to the hidden original.
- Deleted interpreters stay counted: the ``interp`` alias brings the books up to date before a
  deletion, so what they ran is kept in ``retired``.
- Tcl counts in a C ``int`` (``interp limit -value`` refuses more, ``info cmdcount`` wraps past
  2**31), so a budget above :data:`MAX_COMMANDS` is counted but not enforced: such a policy
  (e.g. 10**10) means "no command limit" and the CPU limit bounds the tclet instead.
- What the count cannot see: a loop that runs no command at all (``while 1 {}``, ``lmap x
  $big {}``) never moves ``info cmdcount``, nor does a script of one compiled command run
  again and again (measured on 8.6.13: ``time {incr x} 3000000`` adds 1 to the count,
  ``c eval {incr x}`` 0 and ``c eval {incr x; incr x}`` 1; a proc or alias called counts). The
  CPU limit ends them (the host at ``cpu`` seconds; ``RLIMIT_CPU`` at
  ``cpu + 1`` s as a backstop, see :mod:`tcletd.worker.sandbox`).

**Heartbeat, only while the tclet is active**: :tcl:`::tcletd::Beat` is a master ``after``
timer, so it fires only when the tclet returns to the event loop (``vwait``/``update`` in its
script, or idle after it); master timers are not the tclet's events (the runtime's "anything
left?" check looks only at the tclet's interpreters). A tclet that ran no command for a whole
interval *rests* (:tcl:`::tcletd::Rest`, an idle handler, so it runs only once its loop has
nothing left to do): the worker tells the host it waits (``Heartbeat(waiting=True)``), stops
the timer and arms a :class:`WakeDetector`, so an idle tclet costs no wake-up at all, in the
worker or in the host (the timer used to wake every worker five times a second; with the
watchdog's looks, 300 idle tclets cost the host 0.23-0.26 of a core, now 0.01). The first
pass of the Tcl notifier after a rest (an event arrived, whatever it is for) tells the host the
tclet runs again, before any of the tclet's handlers can block, and restarts the timer
(:tcl:`::tcletd::Woke`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tkinter

from tcletd.worker.channels import probe

__all__ = ["LIMITS_TCL", "MAX_COMMANDS", "WakeDetector", "enforced_budget"]

MAX_COMMANDS = 2_000_000_000
"""The largest command budget Tcl can enforce (its counters are C ``int``s; some room is left
for the counts the interpreters start from)."""


def enforced_budget(commands: int) -> int:
    """The budget the worker enforces for ``spec.commands``: 0 (none) if it does not fit."""
    return commands if 0 < commands <= MAX_COMMANDS else 0


_TCL_EVAL_GLOBAL = 0x20000
# Tcl_EventCheckProc(ClientData, int flags). Made here, at import (in the zygote, before any
# sandbox): a ctypes callback needs executable memory from libffi.
_CHECK_PROC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int)
_DETECTORS: dict[int, WakeDetector] = {}  # by the key Tcl hands back as ClientData


def _on_check(key: int | None, _flags: int) -> None:
    """Tcl's notifier is past its wait. Inside Tcl_DoOneEvent, in a ctypes callback: tkinter must
    not be called from here (it would lose the thread state it keeps for its own callbacks), so
    the detector evaluates Tcl through the C API, which releases the GIL for the call; the Tcl it
    runs may then call the runtime's Python commands as any Tcl code does. An exception must not
    escape: ctypes would print it on the tclet's stderr."""
    with contextlib.suppress(BaseException):
        detector = _DETECTORS.get(key or 0)
        if detector is not None and detector.armed:
            detector.fire()


_ON_CHECK = _CHECK_PROC(_on_check)


class WakeDetector:
    """Tells the runtime when the Tcl event loop passes its wait after the tclet rested.

    A Tcl event source with only a check procedure (``Tcl_CreateEventSource``): Tcl calls it
    after each wait for events, before it services any, so the host hears that the tclet runs
    before a handler of the tclet can block. It is registered from the first rest and taken away
    by :meth:`prune` at the next beat (never from inside the check: Tcl frees a source as it is
    deleted, while it walks the list), so an active tclet pays no callback per event.
    ``available`` is False without the Tcl C API (a static Tcl): the tclet then never rests.
    """

    def __init__(self, tk: tkinter.Tk) -> None:
        self.armed = False
        self._registered = False
        self._key = id(self)
        self.available = False
        # The library the zygote found and bound before it forked (probe answers from that
        # binding): finding it again in /proc/self/maps cost each worker ~0.8 ms of its start.
        kind, path = probe(tk)
        if kind != "native":
            return
        try:
            mode = getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LOCAL", 0)
            lib = ctypes.CDLL(path, mode=mode)
            self._create = lib.Tcl_CreateEventSource
            self._delete = lib.Tcl_DeleteEventSource
            for func in (self._create, self._delete):
                func.argtypes = [ctypes.c_void_p, _CHECK_PROC, ctypes.c_void_p]
                func.restype = None
            self._eval = lib.Tcl_EvalEx
            self._eval.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
            self._eval.restype = ctypes.c_int
            self._save = lib.Tcl_SaveInterpState
            self._save.argtypes = [ctypes.c_void_p, ctypes.c_int]
            self._save.restype = ctypes.c_void_p
            self._restore = lib.Tcl_RestoreInterpState
            self._restore.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            self._restore.restype = ctypes.c_int
        except (OSError, AttributeError):
            return
        self._interp = ctypes.c_void_p(tk.interpaddr())
        self.available = True

    def arm(self) -> None:
        """The tclet rests: the next pass of the notifier wakes it."""
        if not self._registered:
            _DETECTORS[self._key] = self
            self._create(None, _ON_CHECK, ctypes.c_void_p(self._key))
            self._registered = True
        self.armed = True

    def fire(self) -> None:
        """The notifier passed its wait: ``::tcletd::Woke``, the master interpreter's result and
        error state kept as they were (the pass may be inside any of the tclet's commands)."""
        self.armed = False
        state = self._save(self._interp, 0)
        self._eval(self._interp, b"::tcletd::Woke", -1, _TCL_EVAL_GLOBAL)
        self._restore(self._interp, state)

    def prune(self) -> None:
        """Take the event source away while the tclet is active (outside the notifier's check)."""
        if self._registered and not self.armed:
            self._delete(None, _ON_CHECK, ctypes.c_void_p(self._key))
            self._registered = False
            _DETECTORS.pop(self._key, None)

    def close(self) -> None:
        self.armed = False
        self.prune()


LIMITS_TCL = r"""
namespace eval ::tcletd::budget {
    variable total 0     ;# the tree's command budget (0: none)
    variable root {}     ;# the tclet's path
    variable start {}    ;# path -> its count when counting began
    variable last {}     ;# path -> its count when last read
    variable retired 0   ;# commands run by interpreters deleted since
    variable value {}    ;# path -> the -value last given (not set again when unchanged)
    variable children 0  ;# serial for the hidden names of child commands
}

# Give `path` a hidden count reader and keep `info cmdcount` working for the tclet through an
# alias. Runs before any tclet code runs in `path`, so ::tcl::info::cmdcount is Tcl's own.
proc ::tcletd::HideCount {path} {
    interp eval $path {::rename ::tcl::info::cmdcount ::tcletd_cmdcount}
    interp hide $path tcletd_cmdcount
    interp alias $path ::tcl::info::cmdcount {} ::tcletd::CmdCount $path
}

proc ::tcletd::CmdCount {path args} {
    if {[llength $args]} {
        Fail [list info cmdcount {*}$args] {wrong # args: should be "info cmdcount"} \
            {TCL WRONGARGS}
    }
    interp invokehidden $path tcletd_cmdcount
}

# A path's command count. Over its limit, nothing runs in it: it ran one command past -value.
proc ::tcletd::Count {path} {
    if {![catch {interp invokehidden $path tcletd_cmdcount} n]} {
        return $n
    }
    if {![catch {dict get [interp limit $path commands] -value} v] && $v ne ""} {
        return [expr {$v + 1}]
    }
    namespace upvar ::tcletd::budget last last
    if {[dict exists $last $path]} {
        return [dict get $last $path]
    }
    return 0
}

# Bring the books up to date: returns the commands the tclet's tree used. With a budget, what
# the tree has left is shared out so that the interpreters' allowances (limit - count) never add
# up to more than it: one interpreter spending cannot leave the others a stale, larger share.
# `firing` is an interpreter over its limit whose callback is running: it gets half of what is
# left (the one that ran out is likely to run on), the others share the other half; without
# one, all get equal shares. Its limit is left standing when nothing is left (setting its value
# would cancel the limit error).
proc ::tcletd::Tighten {{firing {}}} {
    namespace upvar ::tcletd::budget total total root root start start last last \
        retired retired value value
    set now {}
    if {$root eq "" || ![interp exists $root]} {
        # the tclet is gone
    } elseif {![llength [interp slaves $root]]} {
        # the usual case, kept cheap for the heartbeat: no child interpreter
        if {[dict exists $start $root]} {
            dict set now $root [Count $root]
        }
    } else {
        foreach path [Tree $root] {
            if {[dict exists $start $path]} {
                dict set now $path [Count $path]
            }
        }
    }
    dict for {path n} $last {
        if {![dict exists $now $path]} {
            incr retired [expr {$n - [dict get $start $path]}]
            dict unset start $path
            dict unset value $path
        }
    }
    set last $now
    set used $retired
    dict for {path n} $now {
        incr used [expr {$n - [dict get $start $path]}]
    }
    if {$total > 0} {
        set left [expr {max($total - $used, 0)}]
        set others [expr {[dict size $now] - 1}]
        if {$others <= 0} {
            set each $left
            set own $left
        } elseif {[dict exists $now $firing]} {
            set each [expr {$left / (2 * $others)}]
            set own [expr {$left - $each * $others}]
        } else {
            set each [expr {$left / ($others + 1)}]
            set own $each
        }
        dict for {path n} $now {
            if {$path eq $firing} {
                if {$left > 0} {
                    set v [expr {$n + $own}]
                    interp limit $path commands -value $v
                    dict set value $path $v
                }
            } else {
                set v [expr {$n + $each}]
                if {![dict exists $value $path] || [dict get $value $path] != $v} {
                    interp limit $path commands -value $v
                    dict set value $path $v
                }
            }
        }
    }
    return $used
}

# Start counting `path` (the tclet, or a child just created and hardened).
proc ::tcletd::Track {path} {
    namespace upvar ::tcletd::budget total total start start last last value value
    set n [Count $path]
    dict set start $path $n
    dict set last $path $n
    dict unset value $path  ;# a new interpreter may reuse a deleted one's path
    if {$total > 0} {
        interp limit $path commands -command [list ::tcletd::OnLimit $path]
        Tighten
    }
}

# Start the budget on the tclet, just before its script runs.
proc ::tcletd::Budget {slave total} {
    set ::tcletd::budget::total $total
    set ::tcletd::budget::root $slave
    Track $slave
}

# A policy granted while the tclet runs brings its own budget (0: none): count on against it.
proc ::tcletd::Rebudget {total} {
    namespace upvar ::tcletd::budget total was start start value value
    if {$total > 0} {
        foreach path [dict keys $start] {
            if {[interp exists $path]} {
                interp limit $path commands -command [list ::tcletd::OnLimit $path]
            }
        }
        set was $total
        Tighten
        return
    }
    set was 0
    foreach path [dict keys $start] {
        if {[interp exists $path]} {
            interp limit $path commands -command {} -value {}
        }
    }
    set value {}
}

# An interpreter reached its limit: raise it by its share of what the tree has left, or let it
# stand.
proc ::tcletd::OnLimit {path} {
    if {[catch {Tighten $path} used]} {
        set used $::tcletd::budget::total
    }
    if {$used >= $::tcletd::budget::total} {
        ::tcletd::py::limit
    }
}

# A child the tclet just created: lift the limit of 0 Tcl gave it, harden it, count it.
proc ::tcletd::Adopt {path} {
    if {$::tcletd::budget::total > 0} {
        interp limit $path commands -value {}
    }
    Harden $path
    WrapChild $path
    Track $path
}

# Replace the child's own command in its parent with an alias that refuses `limit`.
proc ::tcletd::WrapChild {path} {
    set parent [lrange $path 0 end-1]
    set name [lindex $path end]
    set token tcletd_child[incr ::tcletd::budget::children]
    if {[catch {
        interp hide $parent $name $token
        interp alias $parent ::$name {} ::tcletd::ChildCmd $path $token
    } msg]} {
        interp delete $path
        return -code error "couldn't create interpreter \"$name\": $msg"
    }
}

proc ::tcletd::ChildCmd {path token args} {
    set cmd [list [lindex $path end] {*}$args]
    set sub [lindex $args 0]
    set len [string length $sub]
    if {$len && [string equal -length $len $sub limit]} {
        Fail $cmd "permission denied: a tclet cannot read or change interpreter limits"
    }
    if {![interp exists $path]} {
        Fail $cmd "invalid command name \"[lindex $path end]\"" \
            [list TCL LOOKUP COMMAND [lindex $path end]]
    }
    set code [catch {interp invokehidden [lrange $path 0 end-1] $token {*}$args} r o]
    ::tcletd::py::drain
    if {$code} {
        Fail $cmd $r [dict get $o -errorcode]
    }
    return $r
}

# The heartbeat: every `every` ms from the master's event loop while the tclet is active, with
# its command count. An interval in which the tclet ran no command arms the rest: our own read
# of its count adds one command per interpreter (hence the slack of two each), and the runtime's
# "anything left?" check (::tcletd::Busy) more, which it measures and leaves out (`own`). With
# a slack of 4 + 4 per interpreter, a tclet ticking every 100 ms (two commands a tick) rested
# and woke 4 times a second; it now beats 5 times a second, as every tclet did before.
namespace eval ::tcletd::live {
    variable every 200   ;# ms between beats
    variable timer {}    ;# the next beat's `after` id; none while the tclet rests
    variable last -1     ;# the count the last beat saw
    variable own 0       ;# commands the runtime's own checks ran in the tclet since
    variable armed 0     ;# ::tcletd::Rest is pending as an idle handler
}

proc ::tcletd::Beat {{ms {}}} {
    namespace upvar ::tcletd::live every every timer timer last last own own armed armed
    if {$ms ne ""} {
        set every $ms
    }
    set timer [after $every ::tcletd::Beat]
    if {[catch {Tighten} used]} {
        set used 0
    }
    set ran [expr {$used - $last - $own}]
    set own 0
    set last $used
    if {$ran <= 2 * max([dict size $::tcletd::budget::last], 1) && !$armed} {
        # Quiet: rest once the loop has nothing left to do. A rest still pending at the next
        # beat means the loop never was idle meanwhile: that beat is sent.
        set armed 1
        after idle ::tcletd::Rest
        return
    }
    ::tcletd::py::beat run $used
}

# ::tcletd::busy, its commands in the tclet's interpreters left out of the next beat's count.
proc ::tcletd::Busy {slave} {
    set before [Tighten]
    set busy [busy $slave]
    incr ::tcletd::live::own [expr {[Tighten] - $before}]
    return $busy
}

# The loop has nothing left to do after a quiet interval: rest, unless the runtime says no (no
# wake detector; or nothing left to wait for, and the tclet ends). A rest inside the tclet's own
# `update` is taken back at once: the next pass of `update` is a wake.
proc ::tcletd::Rest {} {
    namespace upvar ::tcletd::live timer timer last last armed armed
    set armed 0
    if {[::tcletd::py::beat rest [expr {max($last, 0)}]]} {
        after cancel $timer
        set timer {}
    }
}

# The tclet ended: no more beats.
proc ::tcletd::Unbeat {} {
    after cancel $::tcletd::live::timer
    set ::tcletd::live::timer {}
}

# The wake detector saw the notifier's first pass after a rest (evaluated inside that pass,
# before any handler of the tclet runs): tell the host, beat again.
proc ::tcletd::Woke {} {
    namespace upvar ::tcletd::live timer timer every every last last
    if {$timer eq ""} {
        set timer [after $every ::tcletd::Beat]
    }
    ::tcletd::py::beat woke [expr {max($last, 0)}]
}
"""
