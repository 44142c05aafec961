# echo_server.tcl: a line echo server, event-driven.
#
#   tcletd run --policy trusted examples/echo_server.tcl -- ?PORT? ?CLIENTS?
#
# Listens on 127.0.0.1 PORT (default 7777; 0 picks a free port) and echoes every line back.
# With CLIENTS, it exits after that many clients have come and gone, so it can be used in
# scripts; without, it serves until it is killed.

set port [expr {[llength $argv] > 0 ? [lindex $argv 0] : 7777}]
set limit [expr {[llength $argv] > 1 ? [lindex $argv 1] : 0}]
set finished 0

proc accept {chan addr port} {
    puts "client from $addr:$port"
    fconfigure $chan -buffering line -blocking 0
    fileevent $chan readable [list echo $chan $addr:$port]
}

proc echo {chan who} {
    if {[gets $chan line] >= 0} {
        puts $chan $line
        return
    }
    if {[eof $chan]} {
        close $chan
        puts "client $who left"
        incr ::finished
        if {$::limit > 0 && $::finished >= $::limit} {
            close $::server
            set ::done 1
        }
    }
    # Otherwise only part of a line has arrived; wait for the rest.
}

set server [socket -server accept -myaddr 127.0.0.1 $port]
puts "listening on 127.0.0.1 port [lindex [fconfigure $server -sockname] 2]"
flush stdout
vwait done
puts "served $finished clients, bye"
exit 0
