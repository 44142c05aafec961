# Runaway recursion in Tcl: stopped by Tcl's recursion limit, which a safe interpreter cannot
# raise; the error ends the tclet like any uncaught error.
puts started
flush stdout
catch {interp recursionlimit {} 1000000}
proc down {n} {down [incr n]}
down 0
