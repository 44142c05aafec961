# needs:
# A script that does not call exit: it serves a fixed number of clients ("Hi and bye!"),
# then closes everything and lets its last vwait complete. tclsh ends when the script
# returns; a tclet ends when nothing is left for its event loop; both must end here.
set wanted 3
set served 0
set watchdog [after 20000 {puts stderr "watchdog: timed out"; exit 99}]

proc accept {chan addr port} {
    global served wanted srv
    incr served
    puts $chan "Hi and bye!"
    close $chan
    if {$served == $wanted} {
        close $srv
        set ::finished 1
    }
}
set srv [socket -server accept -myaddr 127.0.0.1 0]
set port [lindex [fconfigure $srv -sockname] 2]

proc client {i} {
    set c [socket 127.0.0.1 $::port]
    fconfigure $c -blocking 0
    fileevent $c readable [list got $c $i]
}
proc got {c i} {
    set n [gets $c line]
    if {$n >= 0} {
        puts "client $i: $line"
    } elseif {[eof $c]} {
        close $c
        incr ::clients_done
    }
}
set clients_done 0
for {set i 1} {$i <= $wanted} {incr i} {
    client $i
    vwait ::clients_done
}
# The last accept usually ran during the loop's final vwait already.
if {![info exists ::finished]} {vwait ::finished}
after cancel $watchdog
puts "served $served, nothing left pending: [expr {[after info] eq ""}]"
