# needs: refused
# status: 1
# A refused blocking connect: the error text, the errorCode, the return options, and that
# the failure leaves no channel behind. The port is bound but not listening (kept by the test).
lassign $argv host refused

set before [llength [chan names]]
set rc [catch {socket $host $refused} msg opts]
puts "rc $rc"
puts "message: $msg"
puts "errorCode: $::errorCode"
puts "-errorcode: [dict get $opts -errorcode]"
puts "-code [dict get $opts -code] -level [dict get $opts -level]"
puts "channels leaked: [expr {[llength [chan names]] - $before}]"

# The same with -myaddr, and with a numeric host spelled differently.
set rc [catch {socket -myaddr 127.0.0.1 $host $refused} msg]
puts "with -myaddr: rc $rc: $msg"

# try/trap on the POSIX code, as a careful client would write it.
try {
    socket $host $refused
} trap {POSIX ECONNREFUSED} {msg} {
    puts "trapped ECONNREFUSED: $msg"
}

# An uncaught refused connect ends the script with status 1 and the message on stderr.
puts "about to fail"
flush stdout
socket $host $refused
puts "not reached"
