# needs: echo
# status: 3
# The exit status and stdout ordering: output written before exit must all arrive, even
# with sockets still open and data unread, and the status must be the one given to exit.
lassign $argv host port

set s [socket $host $port]
fconfigure $s -buffering line
puts $s "still open at exit"
puts "line [gets $s]"
puts -nonewline "no newline yet, "
puts "then a newline"
for {set i 0} {$i < 1000} {incr i} {
    puts "filler $i [string repeat . 60]"
}
# Leave the socket open with unread echo in it: exit must not hang on it.
puts $s "unread"
exit 3
