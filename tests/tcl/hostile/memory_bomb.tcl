# Memory bomb. argv: doubling (one string doubled until allocation is huge) or chunks
# (many 1 MiB strings kept in a list). Ended by the memory limit.
puts started
flush stdout
switch -- [lindex $argv 0] {
    doubling {
        set s x
        while 1 {append s $s}
    }
    chunks {
        set l {}
        set i 0
        while 1 {lappend l [string repeat [format %c [expr {65 + [incr i] % 26}]] 1048576]}
    }
    default {error "mode?"}
}
