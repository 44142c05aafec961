# Descriptor bomb without the host: chan pipe in the tclet, its ::tcl::chan::pipe, and chan pipe
# in child interpreters it creates (and their children). Every attempt must fail; the tclet goes
# on, reports, and waits so the test can count the worker's descriptors.
puts started
flush stdout
set made 0
set refused 0
proc try {script} {
    if {[catch {uplevel #0 $script}]} {incr ::refused} else {incr ::made}
}
for {set i 0} {$i < 2000} {incr i} {
    try {chan pipe}
    try {::tcl::chan::pipe}
}
for {set i 0} {$i < 200} {incr i} {
    set k [interp create]
    try [list $k eval {chan pipe}]
    try [list $k eval {::tcl::chan::pipe}]
    $k eval {interp create grandkid}
    try [list $k eval {grandkid eval {chan pipe}}]
    interp delete $k
}
puts "made $made refused $refused"
flush stdout
after 3000 {set ::done 1}
vwait ::done
exit 0
