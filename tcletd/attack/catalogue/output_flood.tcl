# attack: output_flood
# target: host memory: standard output written as fast as Tcl can
# contained: the host relays the output with backpressure and its own memory does not grow
# stopped-by: demotion cpu deadline
# judge: host-memory
#
# home sets no output quota: output is a stream the host never buffers. Writing costs the tclet
# CPU, so its cpu limit may end it; otherwise the tool ends it at its deadline. Either way the
# tool checks the host's memory meanwhile.
puts started
flush stdout
set line [string repeat "flood " 170]
while 1 {puts $line}
