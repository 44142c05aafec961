# attack: slow_reader
# target: host memory: sockets to a server that sends without end, never read
# contained: the bytes wait in the kernel's buffers, never in the host, whose memory does not grow
# stopped-by: deadline
# judge: host-memory
#
# It opens as many sockets to the sender as the quota allows (trying again when the connects
# quota refuses) and then never reads from them.
set host [dict get $argv host]
set port [dict get $argv sender_port]
puts started
flush stdout
set held {}
set tries 0
while {[llength $held] < 8 && [incr tries] < 200} {
    if {[catch {socket $host $port} s options]} {
        if {[lindex [dict get $options -errorcode] 2] eq "sockets"} break
        after 100
    } else {
        lappend held $s
    }
}
puts "holding [llength $held] unread sockets"
flush stdout
vwait forever
