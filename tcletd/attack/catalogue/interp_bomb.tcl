# attack: interp_bomb
# target: memory: child interpreters created without end, each creating one of its own
# contained: the host ends it at its memory or commands limit
# stopped-by: memory commands cpu
# judge: ended
# deadline: 30s
# quick-deadline: 20s
#
# Every interpreter costs its own command tables and its own copy of the Safe Base set-up, so
# memory grows with few Tcl commands counted in the tclet's own interpreter.
puts started
flush stdout
set i 0
while 1 {
    set child [interp create]
    $child eval {interp create}
    if {[incr i] % 1000 == 0} {
        puts "interpreters [expr {2 * $i}]"
        flush stdout
    }
}
