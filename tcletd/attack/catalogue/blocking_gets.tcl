# attack: blocking_gets
# target: blocking: a gets on a server that never sends anything
# contained: the tclet blocks in its own process only; the host shows it busy and ends it at its deadline
# stopped-by: deadline
# judge: survives
set s [socket [dict get $argv host] [dict get $argv silent_port]]
puts started
flush stdout
gets $s line
puts "unreachable: got {$line}"
