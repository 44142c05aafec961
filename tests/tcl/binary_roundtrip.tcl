# needs: sink source echo
# Binary transfer of every byte value 0..255, 1 MiB each way, checked with zlib crc32 and a
# byte sum: upload to a sink (which answers "count crc" after our half-close), download from
# a source, and a simultaneous both-ways echo with non-blocking writes and a readable handler.
lassign $argv host sinkport sourceport echoport
after 30000 {puts stderr "watchdog: timed out"; exit 99}

set block ""
for {set i 0} {$i < 256} {incr i} {append block [binary format c $i]}
set size [expr {1024 * 1024}]
set data [string repeat $block [expr {$size / 256}]]
set crc [zlib crc32 $data]
binary scan $data cu* bytes
set sum [tcl::mathop::+ {*}$bytes]
unset bytes
puts "pattern: [string length $data] bytes, crc32 $crc, sum $sum"

# Upload in 64 KiB writes.
set s [socket $host $sinkport]
fconfigure $s -translation binary -buffersize 65536
puts "translation [fconfigure $s -translation] encoding [fconfigure $s -encoding]"
for {set off 0} {$off < $size} {incr off 65536} {
    puts -nonewline $s [string range $data $off [expr {$off + 65535}]]
}
flush $s
close $s write
fconfigure $s -translation auto
set reply [gets $s]
lassign $reply count peercrc
puts "upload: server counted $count bytes, crc match [expr {$peercrc == $crc}]"
puts "upload: eof after reply [expr {[gets $s] eq "" && [eof $s]}]"
close $s

# Download: ask for the same size, read to EOF.
set s [socket $host $sourceport]
puts $s $size
flush $s
fconfigure $s -translation binary
set got [read $s]
puts "download: [string length $got] bytes, crc match [expr {[zlib crc32 $got] == $crc}], identical [expr {$got eq $data}]"
binary scan $got cu* bytes
puts "download: sum [tcl::mathop::+ {*}$bytes], first [lrange $bytes 0 3], last [lrange $bytes end-3 end]"
unset bytes got
close $s

# Both directions at once: non-blocking writes are buffered by Tcl and flushed in the
# background while the readable handler collects the echo.
set s [socket $host $echoport]
fconfigure $s -translation binary -blocking 0 -buffersize 65536
set echoed ""
proc on_echo {s} {
    global echoed size
    append echoed [read $s]
    if {[eof $s] || [string length $echoed] >= $size} {
        fileevent $s readable {}
        set ::echo_done 1
    }
}
fileevent $s readable [list on_echo $s]
puts -nonewline $s $data
flush $s
vwait ::echo_done
puts "echo: [string length $echoed] bytes back, crc match [expr {[zlib crc32 $echoed] == $crc}]"
close $s
exit 0
