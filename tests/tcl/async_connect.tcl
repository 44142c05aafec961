# needs: echo refused
# socket -async: the writable fileevent fires when the connect finishes, and
# fconfigure -error tells success ("") from failure ("connection refused").
lassign $argv host port refused
# Channel names differ between runs and runtimes; error messages are printed without them.
proc scrub {msg} {regsub -all {"[^"]*"} $msg {"CHAN"}}
after 20000 {puts stderr "watchdog: timed out"; exit 99}

proc connected {s tag} {
    fileevent $s writable {}
    set err [fconfigure $s -error]
    puts "$tag: writable fired, -error {$err}, -connecting [fconfigure $s -connecting]"
    set ::state($tag) $err
}

# Success: the channel is usable once writable fires.
set s [socket -async $host $port]
fileevent $s writable [list connected $s ok]
vwait ::state(ok)
# -error is cleared by reading it; a second read is empty as well.
puts "ok: -error again {[fconfigure $s -error]}"
fconfigure $s -buffering line
puts $s "hello after async connect"
puts "ok: reply {[gets $s]}"
close $s

# Writing before the connect completes is allowed: Tcl queues the data until connected.
set s [socket -async $host $port]
puts $s "queued before connect"
flush $s
puts "early: reply {[gets $s]}"
close $s

# Failure: the writable event still fires, and -error carries the reason.
set s [socket -async $host $refused]
fileevent $s writable [list connected $s refused]
vwait ::state(refused)
# Only the failure is compared, not its text: tclsh's own async socket remembers the failure and
# says ENOTCONN, while a socket the host connected says what the kernel says (EPIPE or
# ECONNREFUSED). A documented difference (README, "Differences from tclsh").
set rc [catch {puts $s x; flush $s} msg]
puts "refused: write after failure rc $rc"
catch {close $s}

# A blocking operation on a failed async socket reports the error there.
set s [socket -async $host $refused]
set rc [catch {gets $s} msg opts]
puts "refused blocking gets: rc $rc, errorcode [lindex [dict get $opts -errorcode] 0]"
catch {close $s}
exit 0
