# attack: status_flood
# target: control socket: status and list requests as fast as the socket takes them, on many connections
# contained: launches and status requests through the control socket still work meanwhile
# stopped-by: control-bounds
# judge: host-responsive
# driver: status-flood
#
# The tool attacks the control socket itself; this script is the well-behaved tclet it launches
# through that socket meanwhile, to show that launches still work. It does one echo round trip
# and ends.
set s [socket [dict get $argv host] [dict get $argv echo_port]]
fconfigure $s -buffering line
puts started
flush stdout
puts $s [dict get $argv token]
set reply [gets $s]
close $s
puts "echoed [expr {$reply eq [dict get $argv token] ? {ok} : {wrong}}]"
flush stdout
exit 0
