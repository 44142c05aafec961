# attack: bypass_ports
# target: policy: every spelling of port 25, which home does not allow, to the origin's address
# contained: the listener on port 25 accepts not one connection
# stopped-by: policy deadline
# judge: listener
# needs: low-port
# deadline: 30s
# quick-deadline: 20s
#
# The plugin matched raw strings, so 0x19 for 25 slipped past a rule that named the port. Tcl
# reads 0x19, 0o31, 031, +25 and padded forms as 25 (and 0025 as 21); other parsers read 2_5,
# fullwidth or Arabic-Indic digits, 25.0, or wrap 65561 and 2**32+25 to 25, and smtp is 25's
# service name. Each is tried with socket and socket -async (and http::geturl where a URL can
# hold it); a refusal by the connects quota is tried again after a pause. Then it waits.
set host [dict get $argv host]
set low [dict get $argv low_port]
puts started
flush stdout
set spellings [list \
    $low 0x19 0X19 0x0019 031 0o31 0O31 0o031 0b11001 " $low" "$low " "\t$low\n" +$low +0x19 \
    0025 025 $low.0 2_5 2.5e1 25e0 \uff12\uff15 \u0662\u0665 \
    65561 -65511 4294967321 -4294967271 0x10019 smtp SMTP \
]
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
    attempt $spelling [list socket $host $spelling]
    attempt "-async $spelling" [list socket -async $host $spelling]
}
foreach spelling [expr {[dict get $argv quick] ? {} : {0x19 031 +25 0025 smtp}}] {
    attempt "http $spelling" [list http::geturl http://$host:$spelling/ -timeout 2000]
}
puts "tried $tried; no refusal for [llength $reached]: $reached"
flush stdout
exit 0
