# Descriptor bomb through the host: socket -server in a loop, never closed. The sockets quota
# refuses past its limit; the tclet goes on, closes one and listens again.
puts started
flush stdout
set ok {}
set refused 0
set message ""
for {set i 0} {$i < 100} {incr i} {
    if {[catch {socket -server accept 0} m]} {
        incr refused
        set message $m
    } else {
        lappend ok $m
    }
}
close [lindex $ok 0]
set again [expr {![catch {socket -server accept 0}]}]
puts "listening [llength $ok] refused $refused again $again"
puts "message: $message"
exit 0
