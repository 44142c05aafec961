# needs:
# eof and fblocked on non-blocking sockets, with a peer in this script whose writes we
# control: nothing available, a partial line, the rest of the line, data then EOF.
# Waits loop until the wanted state, so only states that Tcl guarantees are printed.
after 20000 {puts stderr "watchdog: timed out"; exit 99}

proc accept {chan addr port} {
    fconfigure $chan -buffering none -translation lf
    set ::peer $chan
}
set srv [socket -server accept -myaddr 127.0.0.1 0]
set port [lindex [fconfigure $srv -sockname] 2]
set c [socket 127.0.0.1 $port]
vwait ::peer
fconfigure $c -blocking 0 -translation lf
puts "fblocked before any read: [fblocked $c], eof [eof $c]"

# Nothing has been sent: gets and read come back empty, and the channel says blocked.
puts "gets with nothing: [gets $c line] fblocked [fblocked $c] eof [eof $c]"
puts "read with nothing: {[read $c]} fblocked [fblocked $c] eof [eof $c]"

# Wait until a readable event fires, then run $script; repeat while it returns 0.
proc wait_until {chan script} {
    while 1 {
        set ::ready 0
        fileevent $chan readable {set ::ready 1}
        vwait ::ready
        fileevent $chan readable {}
        if {[uplevel #0 $script]} return
    }
}

# A partial line: gets cannot complete it, reports blocked, and keeps the bytes buffered.
puts -nonewline $::peer "abc"
# (pending input counts Tcl's buffer only, so the wait has to read to see the bytes.)
wait_until $c {expr {[gets $c ::line] < 0 && [chan pending input $c] >= 3}}
puts "partial line: gets [gets $c line] fblocked [fblocked $c] eof [eof $c] pending [chan pending input $c]"

# The rest of the line: now gets returns the whole thing and the channel is not blocked.
puts $::peer "def"
wait_until $c {expr {[gets $c ::line] >= 0}}
puts "whole line: {$::line} fblocked [fblocked $c] eof [eof $c]"

# read with a count on a non-blocking socket returns what is there, up to the count.
puts -nonewline $::peer "0123456789"
set got ""
wait_until $c {append got [read $c [expr {4 - [string length $got]}]]; expr {[string length $got] >= 4}}
puts "read 4 of 10: {$got}"
set got ""
wait_until $c {append got [read $c]; expr {[string length $got] >= 6}}
puts "then the rest: {$got} fblocked [fblocked $c]"

# Data followed by EOF: the final unterminated line is returned, then eof is set.
puts -nonewline $::peer "tail"
close $::peer
wait_until $c {expr {[gets $c ::line] >= 0 || [eof $c]}}
puts "last line: {$::line} eof [eof $c] fblocked [fblocked $c]"
puts "after eof: gets [gets $c line] {$line} eof [eof $c] fblocked [fblocked $c]"
puts "read after eof: {[read $c]} eof [eof $c]"
# Readable keeps firing at EOF, so a handler that ignores eof would spin.
set ::fired 0
fileevent $c readable {incr ::fired; if {$::fired == 3} {set ::spun 1}}
vwait ::spun
fileevent $c readable {}
puts "readable fired $::fired times at eof"
close $c

# Blocking mode: fblocked is always 0, and gets at EOF returns -1 with eof set.
set c [socket 127.0.0.1 $port]
vwait ::peer
puts $::peer "only line"
close $::peer
puts "blocking: gets {[gets $c]} fblocked [fblocked $c] eof [eof $c]"
puts "blocking: gets [gets $c line] fblocked [fblocked $c] eof [eof $c]"
close $c

# eof is only set by a read that hits it, not by the peer's close alone.
set c [socket 127.0.0.1 $port]
vwait ::peer
close $::peer
after 50 {set ::slept 1}
vwait ::slept
puts "peer closed, before reading: eof [eof $c]"
fconfigure $c -blocking 0
wait_until $c {read $c; eof $c}
puts "after reading: eof [eof $c]"
close $c

close $srv
exit 0
