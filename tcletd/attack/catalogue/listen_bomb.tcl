# attack: listen_bomb
# target: sockets: listening sockets asked for without end, on every address and port
# contained: the policy refuses every listen (home allows none) and the tclet runs to its deadline
# stopped-by: policy deadline
# judge: survives
#
# Each refusal is caught and the next is asked at once; a listen that succeeds is kept.
puts started
flush stdout
set held {}
set refused 0
set message ""
proc accept {args} {}
set addresses [list {} 127.0.0.1 0.0.0.0 :: [dict get $argv host] localhost]
set ports [list 0 [dict get $argv echo_port] 8080 80 65535]
while 1 {
    foreach address $addresses {
        foreach port $ports {
            if {$address eq ""} {
                set request [list socket -server accept $port]
            } else {
                set request [list socket -server accept -myaddr $address $port]
            }
            if {[catch $request result]} {
                set message $result
                incr refused
            } else {
                lappend held $result
            }
        }
    }
    if {$refused % 300 == 0} {
        puts "listening [llength $held] refused $refused: $message"
        flush stdout
    }
}
