# needs:
# Server sockets: socket -server with extra callback args, -myaddr, port 0, -sockname of the
# listener, several clients served in turn, and closing the listener. Peer address and port
# are printed only in a deterministic form.
after 20000 {puts stderr "watchdog: timed out"; exit 99}

proc accept {tag greeting chan addr port} {
    global served
    incr served
    puts "accept #$served tag=$tag"
    puts "addr is $addr"
    puts "port is [expr {[string is integer -strict $port] && $port > 0 && $port < 65536 ? "integer" : "bad: $port"}]"
    puts "accepted channel's own addr is [lindex [fconfigure $chan -sockname] 0]"
    fconfigure $chan -buffering line
    puts $chan "$greeting #$served"
    fileevent $chan readable [list serve $chan]
}

proc serve {chan} {
    if {[gets $chan line] < 0} {
        if {[eof $chan]} {
            puts "server: client closed"
            close $chan
            set ::closed 1
        }
        return
    }
    puts "server got: $line"
    puts $chan [string toupper $line]
}

set served 0
set srv [socket -server [list accept T1 Welcome] -myaddr 127.0.0.1 0]
set sockname [fconfigure $srv -sockname]
set port [lindex $sockname 2]
puts "listener addr is [lindex $sockname 0]"
puts "listener port is [expr {[string is integer -strict $port] && $port > 0 ? "integer" : "bad"}]"
puts "sockname has [llength $sockname] elements"

# The client lives in the same interp, so it must never block: the server's callbacks only
# run while we wait in the event loop. Each step waits for the next line with vwait.
proc client_line {c} {
    if {[gets $c line] >= 0} {set ::line $line}
}
for {set i 1} {$i <= 3} {incr i} {
    set c [socket 127.0.0.1 $port]
    fconfigure $c -buffering line -blocking 0
    fileevent $c readable [list client_line $c]
    vwait ::line
    puts "client $i greeted: $::line"
    puts $c "hello from client $i"
    vwait ::line
    puts "client $i reply: $::line"
    close $c
    vwait ::closed
}
close $srv
puts "listener closed; served $served"

# The port is free again: connecting now is refused.
set rc [catch {socket 127.0.0.1 $port} msg]
puts "connect after close: rc $rc: $msg"
exit 0
