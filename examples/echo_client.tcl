# echo_client.tcl: connect to an echo server, send lines, print the replies.
#
#   tcletd run --origin http://127.0.0.1/ examples/echo_client.tcl -- 127.0.0.1 7777 ?LINE...?
#
# Without LINE arguments it sends three lines of its own.

if {[llength $argv] < 2} {
    puts stderr "usage: echo_client.tcl HOST PORT ?LINE...?"
    exit 2
}
set lines [lassign $argv host port]
if {[llength $lines] == 0} {
    set lines [list "Hello, echo server" "second line" "the end"]
}

if {[catch {socket $host $port} sock]} {
    puts stderr "cannot connect to $host:$port: $sock"
    exit 1
}
fconfigure $sock -buffering line -encoding utf-8 -translation lf
foreach line $lines {
    puts $sock $line
    if {[gets $sock reply] < 0} {
        puts stderr "server closed the connection"
        exit 1
    }
    puts "sent: $line"
    puts "got:  $reply"
}
close $sock
exit 0
