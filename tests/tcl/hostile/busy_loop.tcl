# Busy loop: never returns to the event loop, never stops. Ended by the cpu (or commands) limit.
puts started
flush stdout
set i 0
while 1 {incr i}
