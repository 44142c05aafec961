# attack: busy_loop
# target: CPU: a loop that never returns to the event loop
# contained: the host ends it at its commands or cpu limit while its neighbours keep their pace
# stopped-by: commands cpu
# judge: ended
# deadline: 30s
# quick-deadline: 20s
#
# The tclet never yields, so it never beats from its event loop either; the host must notice it
# from what it measures itself (CPU time, the command count) and end it, demoting it meanwhile.
puts started
flush stdout
set i 0
while 1 {incr i}
