# hi_and_bye.tcl: the Tcl wiki's smallest server. Every client is greeted with "Hi", told
# "Bye!", and disconnected. It serves CLIENTS clients (default 1) and then exits.
#
#   tcletd run --policy trusted examples/hi_and_bye.tcl -- ?PORT? ?CLIENTS?
#
# PORT defaults to 8888 as on the wiki; 0 picks a free port. Try it with
#   nc 127.0.0.1 8888

set port [expr {[llength $argv] > 0 ? [lindex $argv 0] : 8888}]
set clients [expr {[llength $argv] > 1 ? [lindex $argv 1] : 1}]
set served 0

proc accept {chan addr port} {
    puts $chan "Hi"
    puts $chan "Bye!"
    close $chan
    incr ::served
    puts "said hi and bye to client $::served of $::clients"
    if {$::served >= $::clients} {
        close $::server
        set ::done 1
    }
}

set server [socket -server accept -myaddr 127.0.0.1 $port]
puts "listening on 127.0.0.1 port [lindex [fconfigure $server -sockname] 2]"
flush stdout
vwait done
exit 0
