# needs: echo
# Event-driven line protocol: non-blocking socket, readable fileevent, vwait. Each reply
# triggers the next request, so the order of events is fixed and the output deterministic.
lassign $argv host port
after 20000 {puts stderr "watchdog: timed out"; exit 99}

set s [socket $host $port]
fconfigure $s -blocking 0 -buffering line
puts "blocking [fconfigure $s -blocking] buffering [fconfigure $s -buffering]"

set queue {alpha beta {gamma delta} {} omega}
set got {}
set reads 0

proc send_next {s} {
    global queue
    if {[llength $queue] == 0} {
        # Nothing more to send: half-close so the echo server closes and we see EOF.
        close $s write
        return
    }
    set queue [lassign $queue line]
    puts $s $line
}

proc on_readable {s} {
    global got reads
    incr reads
    set n [gets $s line]
    if {$n >= 0} {
        lappend got $line
        puts "reply: {$line} ($n chars)"
        send_next $s
        return
    }
    if {[eof $s]} {
        puts "eof after [llength $got] replies"
        fileevent $s readable {}
        close $s
        set ::done eof
        return
    }
    # Readable but no complete line: only legal if the channel is blocked mid-line.
    if {![fblocked $s]} {
        puts "BUG: gets -1 without eof or fblocked"
    }
}

fileevent $s readable [list on_readable $s]
puts "handler installed: [expr {[fileevent $s readable] eq [list on_readable $s]}]"
send_next $s
vwait ::done
puts "done: $::done, replies [llength $got]"

# A second pass with many requests in flight at once, counted by the handler.
set s [socket $host $port]
fconfigure $s -blocking 0 -buffering full
set want 500
set count 0
proc on_many {s} {
    global count want
    while {[gets $s line] >= 0} {
        if {$line ne "req $count"} {puts "out of order: {$line} expected {req $count}"}
        incr count
    }
    if {$count == $want} {set ::done2 1}
    if {[eof $s]} {set ::done2 eof}
}
fileevent $s readable [list on_many $s]
for {set i 0} {$i < $want} {incr i} {puts $s "req $i"}
flush $s
vwait ::done2
puts "many: $count of $want replies, done2 $::done2"
close $s
exit 0
