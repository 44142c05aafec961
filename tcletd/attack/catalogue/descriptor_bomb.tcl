# attack: descriptor_bomb
# target: descriptors: every way to a descriptor that does not pass through the host
# contained: every attempt fails and the worker holds no more descriptors than when it started
# stopped-by: error deadline
# judge: worker-fds
#
# chan pipe and its ::tcl::chan::pipe, open, file tempfile, exec, load, the hidden commands of
# child interpreters (expose, invokehidden) and the same from children and grandchildren. Each
# attempt is caught so that one refusal does not end the attack; the tclet then waits, holding
# whatever it got, so the tool can count the worker's descriptors before it ends it.
puts started
flush stdout
set made 0
set refused 0
set held {}
proc try {script} {
    if {[catch {uplevel #0 $script} result]} {
        incr ::refused
    } else {
        incr ::made
        lappend ::held $result
    }
}
set attempts {
    {chan pipe}
    {::tcl::chan::pipe}
    {open /dev/null}
    {open /etc/passwd r}
    {open |true r}
    {file tempfile}
    {file tempfile name /tmp/attack}
    {exec true}
    {load {} Tcl}
    {interp invokehidden {} open /dev/null}
    {interp invokehidden {} socket -server x 0}
    {interp expose {} open}
    {open /dev/null}
    {socket -server x 0}
    {zlib push gzip [lindex [chan pipe] 0]}
    {chan create read ::nothing}
}
for {set round 0} {$round < 200} {incr round} {
    foreach attempt $attempts {try $attempt}
}
for {set i 0} {$i < 100} {incr i} {
    set child [interp create]
    foreach attempt $attempts {try [list $child eval $attempt]}
    try [list interp expose $child open]
    try [list interp expose $child exec]
    try [list interp expose $child socket]
    try [list interp invokehidden $child open /dev/null]
    try [list interp invokehidden $child socket -server x 0]
    try [list $child invokehidden open /dev/null]
    try [list $child expose open]
    $child eval {interp create grandchild}
    foreach attempt $attempts {try [list $child eval [list grandchild eval $attempt]]}
    try [list $child eval {interp expose grandchild open}]
    try [list $child eval {interp invokehidden grandchild open /dev/null}]
    # A child is deleted only sometimes: a descriptor it got must not survive it either.
    if {$i % 2} {interp delete $child}
}
puts "made $made refused $refused"
flush stdout
vwait forever
