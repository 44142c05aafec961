# after 0 storm: a thousand timers that each re-arm themselves at once. The tclet keeps
# returning to its event loop (so it looks alive), but never rests. Ended by the cpu limit.
puts started
flush stdout
set n 0
proc tick {} {
    incr ::n
    after 0 tick
}
for {set i 0} {$i < 1000} {incr i} {after 0 tick}
vwait forever
