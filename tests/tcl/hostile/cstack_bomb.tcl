# Runaway recursion on the C stack: nested command substitution is parsed recursively in C,
# past any Tcl-level limit. The worker may crash; only the worker.
puts started
flush stdout
set n 400000
set x [subst "[string repeat {[} $n]list[string repeat {]} $n]"]
puts "survived: [string length $x]"
exit 0
