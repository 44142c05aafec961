# attack: slow_dns
# target: DNS: lookups whose answers take 5 s (past the resolver's timeout), kept in flight by several tclets
# contained: a neighbour's connect (and its own lookups) go on at their pace while these wait
# stopped-by: lookups deadline
# judge: neighbour-connect
# needs: dns
# count: 8
# quick-count: 4
#
# Each name is new (the token and a counter), so no cache answers it. The tclet asks for one
# after the other, without end, each at a port home allows on its origin's address, so the
# host must look it up; every attempt is caught.
set slow [dict get $argv slow_domain]
set token [dict get $argv token]
set port [dict get $argv echo_port]
puts started
flush stdout
set i 0
while 1 {
    set name n[incr i]-$token.$slow
    if {![catch {socket $name $port} s]} {
        catch {close $s}
    } elseif {[string match "*per second*" $s]} {
        after 200
    }
    puts "lookup $i: $s"
    flush stdout
}
