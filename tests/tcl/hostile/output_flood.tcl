# Output flood on stdout or stderr (argv). Ended by the output quota.
set chan [lindex $argv 0]
puts started
flush stdout
set line [string repeat "flood " 170]
while 1 {puts $chan $line}
