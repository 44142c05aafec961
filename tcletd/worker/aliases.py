"""The master-side code behind the tclet's aliases: Tcl procs (``socket``'s arguments are read by
:mod:`tcletd.worker.sockargs`).

Everything here runs in the worker's master interpreter, on arguments the untrusted tclet chose:
the procs only ever build commands with ``list``/``{*}``, never by string concatenation.

Aliases installed in the tclet (``<slave>`` is its path in the master):

- ``socket`` → ``::tcletd::call socket ::tcletd::py::socket`` (parsing and broker in Python)
- ``fconfigure`` → ``::tcletd::FconfigureAlias <slave>`` (``chan configure`` calls it too)
- ``policy`` → ``::tcletd::call policy ::tcletd::py::policy``
- ``exit`` → ``::tcletd::ExitAlias``
- ``interp`` → ``::tcletd::InterpAlias <path>`` (the real one hidden; ``create`` hardens children,
  ``limit`` is refused)
- ``::tcl::info::cmdcount`` → ``::tcletd::CmdCount <path>`` (the real one hidden, see ``limits``)
- ``<child>`` (each child's own command) → ``::tcletd::ChildCmd`` (``limit`` refused)
- ``close``, ``::tcl::chan::close`` → ``::tcletd::CloseAlias <path>`` (the host hears at once)
- ``::tcl::Bgerror`` → ``::tcletd::bgerror <slave>`` (tclsh's default background error report)
"""

from __future__ import annotations

__all__ = ["MASTER_TCL"]

# The master's procs. ``hidden`` is the list of fconfigure options the tclet may not see.
MASTER_TCL = r"""
namespace eval ::tcletd {
    variable hidden {-peername}
    # Tcl_GetChannelOption/Tcl_SetChannelOption: generic options and the length a prefix must
    # exceed to select them (HaveOpt); anything else goes to the channel's driver.
    variable generic {-blocking 2 -buffering 7 -buffersize 7 -encoding 2 -eofchar 2 -translation 1}
}

# Return an error from the caller, with a fresh error stack (nothing of the master's frames).
proc ::tcletd::Fail {cmd msg {code NONE}} {
    return -code error -level 2 -errorcode $code \
        -errorstack [list INNER [list invokeStk1 {*}$cmd]] $msg
}

# Alias target for commands implemented in Python: the Python command answers
# {ok value} or {error message errorcode}.
proc ::tcletd::call {name pycmd args} {
    set r [$pycmd {*}$args]
    if {[lindex $r 0] eq "ok"} {
        return [lindex $r 1]
    }
    Fail [list $name {*}$args] [lindex $r 1] [lindex $r 2]
}

# Does the option name `opt` (as the tclet wrote it) select a hidden option?
proc ::tcletd::IsHidden {opt} {
    variable hidden
    variable generic
    if {![llength $hidden]} {
        return 0
    }
    if {$opt in $hidden} {
        return 1
    }
    set len [string length $opt]
    if {$len < 2} {
        return 0
    }
    foreach {name min} $generic {
        if {$len > $min && [string equal -length $len $opt $name]} {
            return [expr {$name in $hidden}]
        }
    }
    foreach h $hidden {
        if {[string equal -length $len $opt $h]} {
            return 1
        }
    }
    return 0
}

# Tcl's "bad option" message with the hidden options taken out of its list.
proc ::tcletd::Scrub {msg} {
    variable hidden
    set re {^(bad option ".*": should be one of )(.*)$}
    if {![llength $hidden] || ![regexp $re $msg -> head tail]} {
        return $msg
    }
    set opts {}
    foreach o [split [string map {", or " ", "} $tail] ,] {
        set o [string trim $o]
        if {[string match "or *" $o]} {
            set o [string range $o 3 end]
        }
        if {$o ni $hidden} {
            lappend opts $o
        }
    }
    if {![llength $opts]} {
        return $msg
    }
    foreach o [lrange $opts 0 end-1] {
        append head "$o, "
    }
    return "${head}or [lindex $opts end]"
}

# The error Tcl gives for an option that does not exist, listing only the visible options:
# returns {message errorcode}.
proc ::tcletd::Refuse {slave chan opt mode} {
    # A missing channel is reported first, as fconfigure does.
    if {[catch {interp invokehidden $slave fconfigure $chan -blocking} m o]} {
        return [list $m [dict get $o -errorcode]]
    }
    # Ask Tcl for the channel's own list, with an option that cannot exist.
    set probe [list interp invokehidden $slave fconfigure $chan -]
    if {$mode eq "set"} {
        lappend probe {}
    }
    set msg ""
    if {[catch $probe m] && [regexp {^bad option "-": should be one of (.*)$} $m -> tail]} {
        set msg [Scrub "bad option \"$opt\": should be one of $tail"]
    }
    if {![string match "bad option*or -*" $msg]} {
        set msg "bad option \"$opt\": should be one of -blocking, -buffering, -buffersize,\
            -encoding, -eofchar, or -translation"
    }
    return [list $msg NONE]
}

# fconfigure/chan configure for the tclet: Tcl's own command (hidden in the tclet), minus the
# hidden options, which fail as if they did not exist.
proc ::tcletd::FconfigureAlias {slave args} {
    set n [llength $args]
    set cmd [list fconfigure {*}$args]
    if {$n == 2} {
        if {[IsHidden [lindex $args 1]]} {
            Fail $cmd {*}[Refuse $slave [lindex $args 0] [lindex $args 1] get]
        }
    } elseif {$n > 2 && $n % 2 == 1} {
        set i 1
        foreach {opt val} [lrange $args 1 end] {
            if {[IsHidden $opt]} {
                if {$i > 1 && [catch {
                    interp invokehidden $slave fconfigure {*}[lrange $args 0 [expr {$i - 1}]]
                } m o]} {
                    Fail $cmd [Scrub $m] [dict get $o -errorcode]
                }
                Fail $cmd {*}[Refuse $slave [lindex $args 0] $opt set]
            }
            incr i 2
        }
    }
    if {[catch {interp invokehidden $slave fconfigure {*}$args} r o]} {
        Fail $cmd [Scrub $r] [dict get $o -errorcode]
    }
    if {$n == 1} {
        variable hidden
        if {[llength $hidden]} {
            set out {}
            foreach {k v} $r {
                if {$k ni $hidden} {
                    lappend out $k $v
                }
            }
            return $out
        }
    }
    return $r
}

# exit ?returnCode?: Tcl's argument checks, then the runtime ends the tclet.
proc ::tcletd::ExitAlias {args} {
    set cmd [list exit {*}$args]
    if {[llength $args] > 1} {
        Fail $cmd {wrong # args: should be "exit ?returnCode?"} {TCL WRONGARGS}
    }
    set code 0
    if {[llength $args]} {
        set code [lindex $args 0]
        if {![string is integer -strict $code]} {
            if {[string is entier -strict $code]} {
                Fail $cmd "integer value too large to represent" \
                    {ARITH IOVERFLOW {integer value too large to represent}}
            }
            Fail $cmd "expected integer but got \"$code\"" {TCL VALUE INTEGER}
        }
        set code [expr {$code & 0xFF}]
    }
    ::tcletd::py::exit $code
    return
}

# interp, for the tclet and every interpreter it creates: `create` makes a hardened child.
# Limits are the host's: `limit` is refused; the books are read before a `delete` (what the
# deleted interpreters ran stays counted) and every child created is adopted (limits.py).
proc ::tcletd::InterpAlias {path args} {
    set sub [lindex $args 0]
    set len [string length $sub]
    if {$len && [string equal -length $len $sub limit]} {
        Fail [list interp {*}$args] \
            "permission denied: a tclet cannot read or change interpreter limits"
    }
    set delete [expr {$len >= 2 && [string equal -length $len $sub delete]}]
    if {$delete} {
        Tighten
    }
    set code [catch {interp invokehidden $path interp {*}$args} r o]
    if {$delete} {
        Tighten  ;# retire them now, before a new interpreter could take a deleted one's path
    }
    if {!$code && $len >= 2 && [string equal -length $len $sub create]} {
        Adopt [list {*}$path {*}$r]
    }
    ::tcletd::py::drain  ;# `interp delete` may have closed granted sockets
    if {$code} {
        Fail [list interp {*}$args] $r [dict get $o -errorcode]
    }
    return $r
}

# close and chan close: Tcl's, then the host hears of granted sockets closed at once (it holds a
# duplicate of each, so the peer sees EOF only once the host dropped it).
proc ::tcletd::CloseAlias {path args} {
    set code [catch {interp invokehidden $path close {*}$args} r o]
    ::tcletd::py::drain
    if {$code} {
        Fail [list close {*}$args] $r [dict get $o -errorcode]
    }
    return $r
}

# No descriptor outside the host's count: no `chan pipe`; children get the same treatment.
proc ::tcletd::Harden {path} {
    interp eval $path {
        namespace ensemble configure ::chan \
            -map [dict remove [namespace ensemble configure ::chan -map] pipe]
        rename ::tcl::chan::pipe {}
        rename ::tcl::chan::close {}
    }
    foreach cmd {interp close} {
        interp hide $path $cmd
    }
    interp alias $path interp {} ::tcletd::InterpAlias $path
    interp alias $path close {} ::tcletd::CloseAlias $path
    interp alias $path ::tcl::chan::close {} ::tcletd::CloseAlias $path
    HideCount $path
}

# Every interpreter of the tclet, children first.
proc ::tcletd::Tree {path} {
    set out {}
    foreach child [interp slaves $path] {
        lappend out {*}[Tree [list {*}$path $child]]
    }
    lappend out $path
    return $out
}

# Anything left for the event loop in the tclet or its children?
proc ::tcletd::busy {slave} {
    if {![interp exists $slave]} {
        return 0
    }
    foreach path [Tree $slave] {
        if {![catch {interp eval $path {::after info}} ids] && [llength $ids]} {
            return 1
        }
        if {[catch {interp eval $path {::chan names}} chans]} {
            continue
        }
        foreach c $chans {
            foreach ev {readable writable} {
                if {![catch {interp eval $path [list ::chan event $c $ev]} s] && $s ne ""} {
                    return 1
                }
            }
        }
    }
    return 0
}

# Evaluate the tclet's script like tclsh evaluates its script file; returns {code ?errorInfo?}.
# The catch runs in the tclet, so that -errorline is the script's own line.
proc ::tcletd::runscript {slave script name} {
    if {[catch {
        interp eval $slave {::namespace eval ::tcletd {}}
        interp eval $slave [list ::catch $script ::tcletd::msg ::tcletd::opts]
    } code] || [catch {
        interp eval $slave {::list $::tcletd::opts [::namespace delete ::tcletd]}
    } opts]} {
        return {0 {}}
    }
    set opts [lindex $opts 0]
    switch -- $code {
        0 - 2 {
            return {0 {}}
        }
        1 {
            set info [dict get $opts -errorinfo]
        }
        3 {
            set info "invoked \"break\" outside of a loop\n    while executing\n\"break\""
        }
        4 {
            set info "invoked \"continue\" outside of a loop\n    while executing\n\"continue\""
        }
        default {
            set info "command returned bad code: $code"
        }
    }
    if {[string length $name] > 150} {
        set name "[string range $name 0 149]..."
    }
    set line 1
    if {[dict exists $opts -errorline]} {
        set line [dict get $opts -errorline]
    }
    append info "\n    (file \"$name\" line $line)"
    return [list 1 $info]
}

# Call `cmd` at the tclet's global level; returns {code result options}.
proc ::tcletd::AtGlobal {slave cmd} {
    set code [catch {interp eval $slave [list ::uplevel #0 $cmd]} msg opts]
    if {$code == 1} {
        set info [dict get $opts -errorinfo]
        set cut [string last "\n    (\"uplevel\" body line 1)" $info]
        if {$cut >= 0} {
            dict set opts -errorinfo [string range $info 0 [expr {$cut - 1}]]
        }
    }
    return [list $code $msg $opts]
}

# A connection accepted on a server socket: `{*}$cmd $chan $addr $port` at global level; an error
# is a background error and closes the channel (Tcl's AcceptCallbackProc).
proc ::tcletd::accept {slave chan cmd addr port} {
    interp transfer {} $chan $slave
    if {[catch {list {*}$cmd $chan $addr $port} script opts]} {
        lassign [list 1 $script] code msg
    } else {
        lassign [AtGlobal $slave $script] code msg opts
    }
    if {$code != 0 && [interp exists $slave]} {
        catch {interp eval $slave [list ::close $chan]}
        after idle [list ::tcletd::bgreport $slave $msg $opts]
    }
}

# Tcl_BackgroundException for an error that happened in the master's call into the tclet.
proc ::tcletd::bgreport {slave msg opts} {
    if {[interp exists $slave] && ![catch {interp bgerror $slave} handler]} {
        AtGlobal $slave [list {*}$handler $msg $opts]
    }
}

# The tclet's default background error handler: tclsh's (bgerror if defined, else errorInfo on
# stderr), where a plain safe interpreter would stay silent.
proc ::tcletd::bgerror {slave msg opts} {
    set code 1
    if {[dict exists $opts -code]} {
        set code [dict get $opts -code]
    }
    switch -- $code {
        1 {}
        3 {set msg "invoked \"break\" outside of a loop"}
        4 {set msg "invoked \"continue\" outside of a loop"}
        default {set msg "command returned bad code: $code"}
    }
    set info $msg
    if {[dict exists $opts -errorinfo]} {
        set info [dict get $opts -errorinfo]
    }
    catch {interp eval $slave [list ::set ::errorInfo $info]}
    if {[dict exists $opts -errorcode]} {
        catch {interp eval $slave [list ::set ::errorCode [dict get $opts -errorcode]]}
    }
    lassign [AtGlobal $slave [list bgerror $msg]] rc res
    if {$rc == 1} {
        if {[catch {interp eval $slave {::info commands ::bgerror}} found] || $found eq ""} {
            puts stderr $info
        } else {
            puts stderr "bgerror failed to handle background error."
            puts stderr "    Original error: $msg"
            puts stderr "    Error in bgerror: $res"
        }
        flush stderr
    }
    return
}

# End the tclet: like tclsh's exit, put its channels in blocking mode so that deleting the
# interpreters flushes them; unwind whatever it is running (vwait, update, catch).
proc ::tcletd::shutdown {slave chans} {
    if {![interp exists $slave]} {
        return
    }
    set tree [Tree $slave]
    foreach path $tree {
        foreach c $chans {
            catch {interp invokehidden $path fconfigure $c -blocking 1}
        }
    }
    foreach c {stdout stderr} {
        catch {fconfigure $c -blocking 1}
        catch {flush $c}
    }
    foreach path $tree {
        catch {interp cancel -unwind -- $path}
    }
    interp delete $slave
}
"""
