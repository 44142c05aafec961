# Socket open loop. argv: host port mode.
#   hold:  connect 100 times and keep every socket; the sockets quota refuses past its limit;
#          then close one and connect again.
#   churn: connect and close 50 times as fast as possible; connects_per_second refuses; then
#          wait for the next second and connect again.
lassign $argv host port mode
puts started
flush stdout
set ok {}
set refused 0
set message ""
proc attempt {keep} {
    global host port ok refused message
    if {[catch {socket $host $port} m]} {
        incr refused
        set message $m
    } elseif {$keep} {
        lappend ok $m
    } else {
        lappend ok x
        close $m
    }
}
switch -- $mode {
    hold {
        for {set i 0} {$i < 100} {incr i} {attempt 1}
        close [lindex $ok 0]
    }
    churn {
        for {set i 0} {$i < 50} {incr i} {attempt 0}
        after 1200
    }
    default {error "mode?"}
}
set again [expr {![catch {close [socket $host $port]}]}]
puts "opened [llength $ok] refused $refused again $again"
puts "message: $message"
exit 0
