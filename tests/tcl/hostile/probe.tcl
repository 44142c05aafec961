# The well-behaved neighbour: ROUNDS x PER echo round trips, pausing PAUSE ms in the event loop
# between rounds, then one line the test checks exactly: count, mismatches, crc32 of the replies.
# argv: host port rounds per pause
lassign $argv host port rounds per pause
set s [socket $host $port]
fconfigure $s -translation lf -buffering none
set crc 0
set bad 0
set n 0
for {set r 0} {$r < $rounds} {incr r} {
    for {set i 0} {$i < $per} {incr i} {
        set fill [format %c [expr {97 + ($r + $i) % 26}]]
        set line "probe $r $i [string repeat $fill [expr {($r * 7 + $i) % 60}]]"
        puts $s $line
        if {[gets $s reply] < 0} {error "early eof at round $r line $i"}
        if {$reply ne $line} {incr bad}
        set crc [zlib crc32 $reply $crc]
        incr n
    }
    after $pause [list set ::tick $r]
    vwait ::tick
}
close $s
puts "probe n=$n bad=$bad crc=$crc"
exit 0
