# needs: echo
# -myaddr on client and server sockets: the local address really is the one asked for,
# and the connection works. Only 127.0.0.1 is used, so this is deterministic.
lassign $argv host port
after 20000 {puts stderr "watchdog: timed out"; exit 99}

set s [socket -myaddr 127.0.0.1 $host $port]
set sn [fconfigure $s -sockname]
puts "client sockname: [llength $sn] elements, addr [lindex $sn 0], port is integer [string is integer -strict [lindex $sn 2]]"
fconfigure $s -buffering line
puts $s "from 127.0.0.1"
puts "echo: [gets $s]"
close $s

# -myaddr with -async.
set s [socket -async -myaddr 127.0.0.1 $host $port]
fileevent $s writable {set ::w 1}
vwait ::w
fileevent $s writable {}
puts "async with -myaddr: error {[fconfigure $s -error]}, addr [lindex [fconfigure $s -sockname] 0]"
close $s

# A server bound to 127.0.0.1 and a client bound to 127.0.0.1 connecting to it.
proc accept {c addr port} {
    puts "server: peer addr is $addr, local addr is [lindex [fconfigure $c -sockname] 0]"
    puts $c "bound"
    close $c
}
set srv [socket -server accept -myaddr 127.0.0.1 0]
set sp [lindex [fconfigure $srv -sockname] 2]
set c [socket -myaddr 127.0.0.1 127.0.0.1 $sp]
fconfigure $c -blocking 0
fileevent $c readable {if {[gets $::c line] >= 0} {set ::got $line}}
vwait ::got
puts "client got: $::got"
close $c
close $srv

# -myaddr with an address that is not local fails before any connection is attempted.
set rc [catch {socket -myaddr 192.0.2.1 $host $port} msg]
puts "non-local -myaddr: rc $rc: $msg"
exit 0
