# http_get.tcl: fetch a URL with the http package; print the status code and body size.
#
#   tcletd run --origin http://127.0.0.1:8000/ examples/http_get.tcl -- http://127.0.0.1:8000/
#
# Exits 0 on a 2xx answer, 1 otherwise.

package require http

if {[llength $argv] != 1} {
    puts stderr "usage: http_get.tcl URL"
    exit 2
}
set url [lindex $argv 0]

if {[catch {http::geturl $url -binary 1 -timeout 10000} token]} {
    puts stderr "cannot fetch $url: $token"
    exit 1
}
set status [http::status $token]
if {$status ne "ok"} {
    puts stderr "fetching $url: $status [http::error $token]"
    http::cleanup $token
    exit 1
}
set code [http::ncode $token]
set size [string length [http::data $token]]
puts "$url: $code ([http::code $token]), $size bytes"
http::cleanup $token
exit [expr {$code >= 200 && $code < 300 ? 0 : 1}]
