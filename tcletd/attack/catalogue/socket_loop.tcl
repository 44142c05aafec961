# attack: socket_loop
# target: sockets: opens and holds sockets to the echo server without end
# contained: the echo server never holds more of its connections than the sockets quota
# stopped-by: sockets connects deadline
# judge: peak-sockets
#
# When the sockets quota refuses a new socket it closes its oldest and goes on at once, so it
# holds the most the quota allows for as long as it runs; a refusal by the connects quota is
# simply tried again.
set host [dict get $argv host]
set port [dict get $argv echo_port]
puts started
flush stdout
set held {}
set opened 0
set refused 0
while 1 {
    if {[catch {socket $host $port} result options]} {
        incr refused
        if {[lindex [dict get $options -errorcode] 2] eq "sockets" && [llength $held]} {
            catch {close [lindex $held 0]}
            set held [lrange $held 1 end]
        }
        if {$refused % 100 == 0} {
            puts "opened $opened refused $refused holding [llength $held]: $result"
            flush stdout
        }
    } else {
        incr opened
        lappend held $result
    }
}
