# attack: memory_chunks
# target: memory: many 1 MiB strings kept in a list, each allocation small
# contained: the host ends it at its memory limit before it takes the machine's memory
# stopped-by: memory signal
# judge: ended
#
# Unlike memory_doubling no single allocation is large, so an address-space ceiling is met only
# at the very end: the resident size grows steadily, as a leak does.
puts started
flush stdout
set chunks {}
set i 0
while 1 {
    lappend chunks [string repeat [format %c [expr {65 + [incr i] % 26}]] 1048576]
    if {$i % 64 == 0} {
        puts "holding $i MiB"
        flush stdout
    }
}
