# needs: http refused
# package http against a local Python HTTP/1.1 server: a plain GET, a binary body, a
# chunked body, a 404, a redirect (not followed), a HEAD, a POST with -query, an
# asynchronous GET with -command, and a connection that is refused.
lassign $argv host port refused
after 30000 {puts stderr "watchdog: timed out"; exit 99}
package require http
set base "http://$host:$port"

proc show {tag tok} {
    upvar #0 $tok state
    # Header names are compared case-insensitively: http may keep the server's case.
    set ctype ""
    foreach {k v} [http::meta $tok] {
        if {[string tolower $k] eq "content-type"} {set ctype $v}
        if {[string tolower $k] eq "x-test"} {set xtest $v}
        if {[string tolower $k] eq "location"} {set loc $v}
    }
    set body [http::data $tok]
    puts "$tag: status [http::status $tok] ncode [http::ncode $tok] size [http::size $tok] length [string length $body] type {$ctype}"
    if {[info exists xtest]} {puts "$tag: X-Test {$xtest}"}
    if {[info exists loc]} {puts "$tag: Location {$loc}"}
    puts "$tag: code {[http::code $tok]}"
    return $body
}

set tok [http::geturl $base/hello]
puts "hello body: {[string trim [show hello $tok]]}"
http::cleanup $tok

set tok [http::geturl $base/big -binary 1]
set body [show big $tok]
binary scan $body cu* bytes
puts "big: crc [zlib crc32 $body] first [lrange $bytes 0 3] last [lrange $bytes end-1 end]"
http::cleanup $tok

set tok [http::geturl $base/chunked]
set body [show chunked $tok]
puts "chunked: [llength [split [string trim $body] \n]] lines, first {[lindex [split $body \n] 0]}"
http::cleanup $tok

set tok [http::geturl $base/nowhere]
puts "404 body: {[string trim [show missing $tok]]}"
http::cleanup $tok

set tok [http::geturl $base/redirect]
show redirect $tok
http::cleanup $tok

set tok [http::geturl $base/hello -validate 1]
show head $tok
http::cleanup $tok

set tok [http::geturl $base/post -query [http::formatQuery name "tcl let" lang "\u00e9"]]
puts "post body: {[show post $tok]}"
http::cleanup $tok

# Asynchronous: -command runs from the event loop when the transfer is done.
proc done {tok} {
    set ::async_result "[http::status $tok] [http::ncode $tok] [string length [http::data $tok]]"
    http::cleanup $tok
}
set tok [http::geturl $base/big -binary 1 -command done]
puts "async: geturl returned before completion: [expr {![info exists ::async_result]}]"
vwait ::async_result
puts "async: $::async_result"

# -progress callbacks see the total size.
set ::progress {}
proc progress {tok total current} {set ::progress $total}
set tok [http::geturl $base/big -binary 1 -progress progress -blocksize 8192]
puts "progress: total $::progress, ncode [http::ncode $tok]"
http::cleanup $tok

# Refused: the port is bound but not listening (held by the test).
set rc [catch {http::geturl http://$host:$refused/} msg]
puts "refused: rc $rc: $msg"
exit 0
