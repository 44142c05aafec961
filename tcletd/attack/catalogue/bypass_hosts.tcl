# attack: bypass_hosts
# target: policy: every spelling of the listener's address, which home does not allow
# contained: the listener on listener_host accepts not one connection
# stopped-by: policy deadline
# judge: listener
# deadline: 30s
# quick-deadline: 20s
#
# home allows only the origin's address (127.0.0.1). The plugin matched raw strings, so
# 2130706435, 0x7f000003 or 127.3 for 127.0.0.3 slipped past a rule that named the address.
# The spellings are those tests/support/addresses.py's ipv4_spellings gives, computed here from
# listener_host, plus upper case, trailing dots and zero padding; each is tried with socket,
# socket -async and http::geturl. A refusal by the connects quota is tried again after a pause,
# so that each spelling meets the policy (--quick: socket and -async only). Then it exits.
set target [dict get $argv listener_host]
set port [dict get $argv listener_port]
puts started
flush stdout
lassign [split $target .] a b c d
set number [expr {($a << 24) | ($b << 16) | ($c << 8) | $d}]
set hex [format 0x%x $number]
set spellings [list \
    $target \
    $number \
    $hex \
    [format 0x%X $number] \
    [format 0%o.0%o.0%o.0%o $a $b $c $d] \
    $a.[expr {($b << 16) | ($c << 8) | $d}] \
    $a.$b.[expr {($c << 8) | $d}] \
    [format 0x%x.%d.%d.%d $a $b $c $d] \
    ::ffff:$target \
    \[::ffff:$target\] \
    [format ::FFFF:%X:%X [expr {($a << 8) | $b}] [expr {($c << 8) | $d}]] \
    " $target. " \
]
lappend spellings \
    $target. \
    [format 0X%X $number] \
    $number. \
    $hex. \
    [format %03d.%03d.%03d.%03d $a $b $c $d] \
    [format 0x%02x.0x%02x.0x%02x.0x%02x $a $b $c $d] \
    [format 0%o.%d $a [expr {($b << 16) | ($c << 8) | $d}]] \
    [format 0x%x.0x%x $a [expr {($b << 16) | ($c << 8) | $d}]] \
    [format 0%o $number] \
    [format 0:0:0:0:0:ffff:%x:%x [expr {($a << 8) | $b}] [expr {($c << 8) | $d}]] \
    [format \[::ffff:%x:%x\] [expr {($a << 8) | $b}] [expr {($c << 8) | $d}]] \
    ::FFFF:$target \
    "\t$target\n"
set tried 0
set reached {}
proc attempt {spelling script} {
    incr ::tried
    for {set tries 0} {$tries < 40} {incr tries} {
        if {![catch {uplevel #0 $script} result options]} {
            lappend ::reached $spelling
            catch {close $result}
            catch {http::cleanup $result}
            return
        }
        if {[lrange [dict get $options -errorcode] 0 1] ne {TCLETD QUOTA}} return
        after 250
    }
}
catch {package require http}
foreach spelling $spellings {
    attempt $spelling [list socket $spelling $port]
    attempt "-async $spelling" [list socket -async $spelling $port]
}
if {[dict get $argv quick]} {set spellings {}} ;# quick: socket and -async only
foreach spelling $spellings {
    set bare [string trim $spelling]
    if {[string first : $bare] >= 0 && [string index $bare 0] ne "\["} {set bare \[$bare\]}
    attempt "http $bare" [list http::geturl http://$bare:$port/ -timeout 2000]
}
puts "tried $tried; no refusal for [llength $reached]: $reached"
flush stdout
exit 0
