# needs: echo
# fcopy between two sockets, in the background with -command: from a Tcl source server to
# a Tcl sink server, whole stream and with -size; then through the Python echo server.
lassign $argv host echoport
after 30000 {puts stderr "watchdog: timed out"; exit 99}

set block ""
for {set i 0} {$i < 256} {incr i} {append block [binary format c $i]}
set payload [string repeat $block 2000]
set size [string length $payload]
puts "payload $size bytes crc [zlib crc32 $payload]"

# Source: on accept, write the payload and close. Non-blocking, so that Tcl flushes it in
# the background: a blocking write here could wait forever on our own client, which only
# reads once this callback has returned.
proc source_accept {chan addr port} {
    fconfigure $chan -translation binary -blocking 0
    puts -nonewline $chan $::payload
    close $chan
}
# Sink: read to EOF, then record count and crc.
proc sink_accept {chan addr port} {
    fconfigure $chan -translation binary -blocking 0
    set ::sunk($chan) ""
    fileevent $chan readable [list sink_read $chan]
}
proc sink_read {chan} {
    append ::sunk($chan) [read $chan]
    if {[eof $chan]} {
        set data $::sunk($chan)
        unset ::sunk($chan)
        close $chan
        set ::sink_result "[string length $data] bytes crc [zlib crc32 $data]"
    }
}
set src [socket -server source_accept -myaddr 127.0.0.1 0]
set snk [socket -server sink_accept -myaddr 127.0.0.1 0]
set srcport [lindex [fconfigure $src -sockname] 2]
set snkport [lindex [fconfigure $snk -sockname] 2]

proc copied {tag args} {
    if {[llength $args] == 1} {
        set ::copy_result "$tag: copied [lindex $args 0] bytes"
    } else {
        set ::copy_result "$tag: copied [lindex $args 0] bytes, error [lindex $args 1]"
    }
}

# 1. Whole stream.
set a [socket 127.0.0.1 $srcport]
set b [socket 127.0.0.1 $snkport]
fconfigure $a -translation binary
fconfigure $b -translation binary
fcopy $a $b -command [list copied whole]
vwait ::copy_result
puts $::copy_result
puts "source at eof: [eof $a]"
close $a
close $b
vwait ::sink_result
puts "sink got $::sink_result"
unset ::copy_result ::sink_result

# 2. With -size: copy only the first 100000 bytes, then read the rest by hand.
set a [socket 127.0.0.1 $srcport]
set b [socket 127.0.0.1 $snkport]
fconfigure $a -translation binary
fconfigure $b -translation binary
fcopy $a $b -size 100000 -command [list copied sized]
vwait ::copy_result
puts $::copy_result
set rest [read $a]
puts "left in source: [string length $rest] bytes, source eof [eof $a]"
close $a
close $b
vwait ::sink_result
puts "sink got $::sink_result"
puts "prefix crc [zlib crc32 [string range $payload 0 99999]]"
unset ::copy_result ::sink_result

# 3. Socket to socket through the Python echo server: the source feeds the echo server,
#    and a second fcopy carries the echo into the sink.
set a [socket 127.0.0.1 $srcport]
set e [socket $host $echoport]
set b [socket 127.0.0.1 $snkport]
foreach c [list $a $e $b] {fconfigure $c -translation binary}
proc step1 {n args} {
    puts "to echo: $n bytes"
    close $::a
    # Half-close toward the echo server: it echoes the rest and then closes.
    close $::e write
}
proc step2 {n args} {
    puts "from echo: $n bytes"
    close $::e
    close $::b
}
fcopy $a $e -command step1
fcopy $e $b -command step2
vwait ::sink_result
puts "sink got $::sink_result"

close $src
close $snk
exit 0
