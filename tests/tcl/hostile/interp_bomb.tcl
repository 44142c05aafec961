# Interpreter bomb: child interpreters created in a loop, each creating one of its own.
# Ended by the memory limit (or the commands limit).
puts started
flush stdout
set i 0
while 1 {
    set k [interp create]
    $k eval {interp create}
    incr i
}
