# attack: memory_doubling
# target: memory: one string doubled until a single allocation is huge
# contained: the worker is ended at its memory limit (or dies of its own allocation failure) and only it
# stopped-by: memory signal
# judge: ended
#
# Each append doubles the string, so the allocations grow as 1, 2, 4 ... MiB and the last ones
# are larger than the limit itself: the worker's address-space ceiling, its cgroup or the host's
# RSS check must end it before it takes the machine's memory.
puts started
flush stdout
set s x
set n 0
while 1 {
    append s $s
    if {[incr n] >= 20} {
        puts "doubled $n times: [string length $s] bytes"
        flush stdout
    }
}
