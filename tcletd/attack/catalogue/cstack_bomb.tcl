# attack: cstack_bomb
# target: C stack: nested command substitution, parsed recursively in C below any Tcl-level limit
# contained: an error, or a crash of its own worker only (the host goes on)
# stopped-by: error signal
# judge: ended
#
# 400,000 nested brackets: Tcl's parser recurses once per level. Either Tcl refuses the nesting
# or the worker's C stack overflows; both must stay inside the worker.
puts started
flush stdout
set n 400000
set x [subst "[string repeat {[} $n]list[string repeat {]} $n]"]
puts "survived: [string length $x]"
flush stdout
set x [expr "[string repeat {(} $n]1[string repeat {)} $n]"]
puts "survived again: $x"
