# needs: sink
# Half-close: "close $s write" sends FIN, the peer reads EOF, and this side can still read
# the peer's reply. Once against a Python sink, once against a Tcl server in this script.
lassign $argv host sinkport
after 20000 {puts stderr "watchdog: timed out"; exit 99}
proc scrub {msg} {regsub -all {"[^"]*"} $msg {"CHAN"}}

set s [socket $host $sinkport]
fconfigure $s -translation binary
puts -nonewline $s [string repeat "half-close " 1000]
close $s write
puts "python sink replied: [gets $s]"
puts "then eof: [gets $s] eof=[eof $s]"
# Writing after the write side is closed is an error on the Tcl side, not a network error.
set rc [catch {puts $s more} msg]
puts "write after close write: rc $rc: [scrub $msg]"
# Closing the write side twice is an error too.
set rc [catch {close $s write} msg]
puts "second close write: rc $rc: [scrub $msg]"
close $s

# Tcl server: counts what it reads until EOF, then answers and closes.
proc accept {chan addr port} {
    fconfigure $chan -translation binary -blocking 0
    set ::count($chan) 0
    fileevent $chan readable [list drain $chan]
}
proc drain {chan} {
    set data [read $chan]
    incr ::count($chan) [string length $data]
    if {[eof $chan]} {
        puts "tcl server: eof after $::count($chan) bytes"
        fconfigure $chan -blocking 1
        puts $chan "you sent $::count($chan) bytes"
        close $chan
    }
}
set srv [socket -server accept -myaddr 127.0.0.1 0]
set port [lindex [fconfigure $srv -sockname] 2]

set c [socket 127.0.0.1 $port]
fconfigure $c -translation binary -blocking 0
puts -nonewline $c [string repeat x 300000]
# close write on a non-blocking channel with pending output: Tcl flushes it in the
# background before sending FIN, so the server must still count every byte.
close $c write
fileevent $c readable [list apply {{c} {
    append ::reply [read $c]
    if {[eof $c]} {set ::done 1}
}} $c]
vwait ::done
puts "client got: [string trim $::reply]"
close $c

# The other direction: the server half-closes and keeps reading.
proc accept2 {chan addr port} {
    fconfigure $chan -buffering line
    puts $chan "server speaks first"
    close $chan write
    fileevent $chan readable [list late $chan]
}
proc late {chan} {
    if {[gets $chan line] >= 0} {
        puts "tcl server still reads: $line"
    } elseif {[eof $chan]} {
        close $chan
        set ::done2 1
    }
}
close $srv
set srv [socket -server accept2 -myaddr 127.0.0.1 0]
set port [lindex [fconfigure $srv -sockname] 2]
set c [socket 127.0.0.1 $port]
fconfigure $c -buffering line -blocking 0
fileevent $c readable [list apply {{c} {
    if {[gets $c line] >= 0} {
        puts "client read: $line"
    } elseif {[eof $c]} {
        puts "client saw eof from server's half-close"
        fileevent $c readable {}
        puts $c "client answers after eof"
        close $c
    }
}} $c]
vwait ::done2
close $srv
exit 0
