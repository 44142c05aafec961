# Blocking gets on a server that never says anything. Contained in its own process (the host
# shows it busy); ended only by the wall limit.
lassign $argv host port
set s [socket $host $port]
puts started
flush stdout
gets $s line
puts "unreachable: got {$line}"
exit 0
