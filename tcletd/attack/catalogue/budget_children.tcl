# attack: budget_children
# target: commands: the command budget spread over child interpreters, each with a count of its own
# contained: the host ends it at its commands or cpu limit, however the work is spread
# stopped-by: commands cpu
# judge: ended
# deadline: 30s
# quick-deadline: 20s
#
# Tcl counts commands per interpreter (info cmdcount), so a budget checked on the tclet's own
# interpreter alone would never see the work its children do. Each child (and grandchild) spins
# until something stops it; a child stopped by a limit of its own is replaced by a fresh one.
puts started
flush stdout
set spin {set i 0; while 1 {incr i}}
set generation 0
while 1 {
    set child [interp create]
    $child eval [list interp create grandchild]
    catch {$child eval [list grandchild eval $spin]}
    catch {$child eval $spin}
    catch {interp delete $child}
    puts "generation [incr generation] stopped"
    flush stdout
}
