# needs: echo
# Encodings and translations on sockets, against a byte-for-byte echo server: what goes on
# the wire for each -encoding/-translation (printed as hex), and how raw bytes are decoded.
# stdout stays ASCII (non-ASCII characters are printed as \uXXXX) so that the output does
# not depend on the encoding of stdout itself.
lassign $argv host port
after 20000 {puts stderr "watchdog: timed out"; exit 99}

proc esc {str} {
    set out ""
    foreach ch [split $str ""] {
        scan $ch %c code
        if {$code < 32 || $code > 126} {
            append out [format "\\u%04x" $code]
        } else {
            append out $ch
        }
    }
    return $out
}

# Write $text with the given options, half-close, and read the echo as raw bytes.
proc wire {opts text} {
    set s [socket $::host $::port]
    fconfigure $s {*}$opts
    puts -nonewline $s $text
    close $s write
    fconfigure $s -translation binary
    set raw [read $s]
    close $s
    return [binary encode hex $raw]
}

# Send raw bytes, half-close, and read the echo back with the given options.
proc decode {opts hex} {
    set s [socket $::host $::port]
    fconfigure $s -translation binary
    puts -nonewline $s [binary decode hex $hex]
    close $s write
    fconfigure $s {*}$opts
    set text [read $s]
    close $s
    return [esc $text]
}

set s [socket $host $port]
puts "default translation: [fconfigure $s -translation]"
puts "default encoding is the system encoding: [expr {[fconfigure $s -encoding] eq [encoding system]}]"
puts "default eofchar: [list [fconfigure $s -eofchar]]"
close $s

set text "h\u00e9llo w\u00f6rld \u20ac \u65e5\u672c\nline2\n"
puts "text: [esc $text]"
foreach opts {
    {-encoding utf-8 -translation lf}
    {-encoding utf-8 -translation crlf}
    {-encoding utf-8 -translation cr}
    {-encoding utf-8 -translation auto}
    {-encoding iso8859-1 -translation lf}
    {-encoding cp1252 -translation lf}
    {-encoding ascii -translation lf}
    {-encoding unicode -translation lf}
    {-translation binary}
    {-encoding binary -translation lf}
} {
    puts "out [list $opts]: [wire $opts $text]"
}

# Round trip through the server with the same options on both directions.
foreach opts {
    {-encoding utf-8 -translation lf}
    {-encoding utf-8 -translation crlf}
    {-encoding iso8859-1 -translation crlf}
} {
    set s [socket $host $port]
    fconfigure $s {*}$opts -buffering line
    puts $s "gr\u00fc\u00df dich \u00bd"
    puts "round trip [list $opts]: [esc [gets $s]]"
    close $s
}

set raw [binary encode hex "l1\r\nl2\rl3\nl4\r\n\r\nend"]
foreach opts {
    {-translation auto -encoding utf-8}
    {-translation crlf -encoding utf-8}
    {-translation cr -encoding utf-8}
    {-translation lf -encoding utf-8}
    {-translation binary}
} {
    puts "in [list $opts]: [decode $opts $raw]"
}

# Decoding non-ASCII bytes: valid UTF-8, Latin-1, and bytes that are not valid UTF-8.
puts "in utf-8 c3a9e282ac: [decode {-encoding utf-8} c3a9e282ac]"
puts "in iso8859-1 e9ff80: [decode {-encoding iso8859-1} e9ff80]"
puts "in cp1252 80e9: [decode {-encoding cp1252} 80e9]"
puts "in utf-8 invalid ff41c3: [decode {-encoding utf-8} ff41c3]"
puts "in utf-8 split sequence: [decode {-encoding utf-8 -buffersize 1} e282ace282ac]"

# -eofchar: reading stops at the EOF character even though more bytes follow.
set s [socket $host $port]
fconfigure $s -translation binary
puts -nonewline $s "before\x1aafter"
close $s write
fconfigure $s -eofchar "\x1a" -translation lf
set first [read $s]
puts "eofchar: read {[esc $first]}, eof [eof $s], eofchar {[esc [fconfigure $s -eofchar]]}"
fconfigure $s -eofchar {} -translation binary
puts "after clearing eofchar: {[esc [read $s]]}"
close $s

# gets on a line split across many small reads, with CRLF in auto mode.
set s [socket $host $port]
fconfigure $s -translation {auto lf} -buffersize 2 -encoding utf-8
puts -nonewline $s "\u00e9t\u00e9 split\r"
flush $s
puts -nonewline $s "\nnext\n"
flush $s
puts "small buffer gets: [esc [gets $s]] / [esc [gets $s]]"
close $s
exit 0
