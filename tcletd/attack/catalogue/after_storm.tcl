# attack: after_storm
# target: scheduling: a thousand timers that each re-arm themselves at once
# contained: the host demotes it to the idle scheduling class (and ends it at its cpu limit)
# stopped-by: demotion cpu
# judge: demoted
# deadline: 30s
# quick-deadline: 10s
#
# The tclet keeps returning to its event loop, so it beats and looks alive, but it never rests:
# only what the host measures (CPU time) can tell it from a busy server.
puts started
flush stdout
set n 0
proc tick {} {
    incr ::n
    after 0 tick
}
for {set i 0} {$i < 1000} {incr i} {after 0 tick}
vwait forever
