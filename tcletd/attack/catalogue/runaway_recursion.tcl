# attack: runaway_recursion
# target: stack: Tcl procedures calling themselves without end
# contained: Tcl's recursion limit (which a safe interpreter cannot raise) stops it with an error
# stopped-by: recursion error
# judge: ended
#
# It first tries to raise the limit; the Safe Base must refuse. The uncaught error then ends the
# tclet as any error does.
puts started
flush stdout
catch {interp recursionlimit {} 1000000}
catch {interp recursionlimit [interp create] 1000000}
proc down {n} {down [incr n]}
down 0
