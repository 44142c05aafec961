# needs: echo
# fconfigure on a socket: defaults and values read back after setting -blocking,
# -buffering, -buffersize, -translation, -encoding, -eofchar; several options at once;
# chan configure as the same thing; errors for bad values. -peername is deliberately not
# used (tcletd hides it), and neither is the full option list, which would include it.
lassign $argv host port
after 20000 {puts stderr "watchdog: timed out"; exit 99}
# Error messages lose channel names, and the -peername entry of the option list: tcletd
# hides that option by design, and the rest of the message should still be Tcl's.
proc scrub {msg} {
    regsub -all {"sock[^"]*"} $msg {"CHAN"} msg
    regsub -all {\-peername, } $msg {} msg
    return $msg
}

set s [socket $host $port]
foreach opt {-blocking -buffering -buffersize -translation -eofchar -connecting} {
    puts "default $opt: {[fconfigure $s $opt]}"
}
puts "-error on a healthy socket: {[fconfigure $s -error]}"

foreach value {none line full} {
    fconfigure $s -buffering $value
    puts "-buffering $value -> [fconfigure $s -buffering]"
}
foreach value {1 4096 65536 1048576 10 0 100000000} {
    fconfigure $s -buffersize $value
    puts "-buffersize $value -> [fconfigure $s -buffersize]"
}
foreach value {0 1 off on false true no yes} {
    fconfigure $s -blocking $value
    puts "-blocking $value -> [fconfigure $s -blocking]"
}
# Start from a known encoding: the default is the system encoding, which depends on the
# locale (encodings.tcl checks the default against [encoding system] instead).
fconfigure $s -encoding utf-8
foreach value {lf crlf cr auto binary {lf crlf} {auto lf} {binary crlf} {crlf binary}} {
    fconfigure $s -translation $value
    puts "-translation {$value} -> {[fconfigure $s -translation]} encoding [fconfigure $s -encoding]"
}
foreach value {utf-8 iso8859-1 ascii binary unicode cp1252} {
    fconfigure $s -encoding $value
    puts "-encoding $value -> [fconfigure $s -encoding] translation {[fconfigure $s -translation]}"
}
foreach value {{} x {x y} {{} z}} {
    fconfigure $s -translation auto -eofchar $value
    puts "-eofchar {$value} -> {[fconfigure $s -eofchar]}"
}

fconfigure $s -blocking 0 -buffering line -buffersize 8192 -translation crlf -encoding utf-8 -eofchar {}
puts "several at once: [fconfigure $s -blocking] [fconfigure $s -buffering] [fconfigure $s -buffersize] {[fconfigure $s -translation]} [fconfigure $s -encoding]"
chan configure $s -blocking 1 -buffering full
puts "chan configure: [chan configure $s -blocking] [chan configure $s -buffering]"
puts "abbreviated -buf: [catch {fconfigure $s -buf} msg] [scrub $msg]"
puts "abbreviated -buffers: [fconfigure $s -buffers]"
puts "abbreviated -tr: [fconfigure $s -tr]"

# The settings are really in effect: crlf on the wire comes back as crlf.
fconfigure $s -translation {lf crlf} -buffering line
puts $s "configured"
fconfigure $s -translation binary
set line [gets $s]
puts "wire after {lf crlf}: [binary encode hex $line]"

# Bad values.
foreach {opt value} {-buffering sometimes -blocking maybe -translation sideways -encoding no-such-encoding} {
    set rc [catch {fconfigure $s $opt $value} msg]
    puts "bad $opt $value: rc $rc: [scrub $msg]"
}
set rc [catch {fconfigure $s -buffering} msg]
puts "read back still works after errors: $rc $msg"
close $s

# The listening side: -sockname works, and a server socket has no -translation of interest
# beyond its defaults.
set srv [socket -server {apply {{c a p} {close $c}}} -myaddr 127.0.0.1 0]
puts "server -blocking [fconfigure $srv -blocking] -buffering [fconfigure $srv -buffering]"
puts "server sockname addr [lindex [fconfigure $srv -sockname] 0]"
close $srv
exit 0
