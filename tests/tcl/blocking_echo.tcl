# needs: echo
# Blocking line protocol against a Python echo server: puts/flush/gets, gets with and
# without a variable, empty and long lines, pipelined lines, and EOF after the server closes.
lassign $argv host port
after 20000 {puts stderr "watchdog: timed out"; exit 99}

set s [socket $host $port]
puts "blocking is [fconfigure $s -blocking]"

foreach line {hello {two words} {} {  leading and trailing  } {tab	inside} {brace \{ and \} and $dollar [bracket]}} {
    puts $s $line
    flush $s
    set reply [gets $s]
    puts "sent {$line} got {$reply} match [expr {$reply eq $line}]"
}

# gets with a variable returns the character count.
puts $s "count me"
flush $s
set n [gets $s reply]
puts "gets returned $n for {$reply}"

# A line much longer than the default 4096-byte buffer.
set long [string repeat "0123456789abcdef" 4096]
puts $s $long
flush $s
set reply [gets $s]
puts "long line: sent [string length $long] got [string length $reply] match [expr {$reply eq $long}]"

# Pipelining: 200 lines out, then 200 lines in; fits in the socket buffers.
for {set i 0} {$i < 200} {incr i} {
    puts $s "line $i [string repeat x $i]"
}
flush $s
set ok 0
for {set i 0} {$i < 200} {incr i} {
    if {[gets $s] eq "line $i [string repeat x $i]"} {incr ok}
}
puts "pipelined: $ok of 200 lines came back in order"

# With -buffering line, puts flushes by itself.
fconfigure $s -buffering line
puts $s "auto flushed"
puts "line buffering: [gets $s]"

# read with a count in blocking mode waits for exactly that many characters.
puts -nonewline $s "abcdefghij"
flush $s
puts "read 4: [read $s 4]"
puts "read 6: [read $s 6]"

# Half-close our side: the echo server sees EOF and closes, so we read EOF.
close $s write
set rest [read $s]
puts "after close write: read {[string length $rest]} chars, eof [eof $s]"
puts "gets at eof: [gets $s line] {$line}"
close $s
puts done
exit 0
