# attack: connect_storm
# target: connects: connection attempts to a closed port as fast as the host answers
# contained: the connects quota refuses past its rate and the tclet, harmless, runs to its deadline
# stopped-by: connects deadline
# judge: survives
#
# Every attempt is refused (by the closed port or by the quota) and caught, so the storm goes on
# until the tool ends it.
set host [dict get $argv host]
set port [dict get $argv closed_port]
puts started
flush stdout
set tries 0
while 1 {
    catch {close [socket $host $port]}
    if {[incr tries] % 200 == 0} {
        puts "tries $tries"
        flush stdout
    }
}
