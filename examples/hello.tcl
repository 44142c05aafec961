# hello.tcl: the smallest tclet. It greets, shows what the host handed it (its argv and
# the embed arguments given with --arg NAME=VALUE), and exits.
#
#   tcletd run examples/hello.tcl
#   tcletd run --arg color=blue examples/hello.tcl -- one two

puts "Hello from a tclet!"
puts "argv ([llength $argv]): $argv"
if {[info exists embed_args]} {
    foreach name [lsort [array names embed_args]] {
        puts "embed_args($name) = $embed_args($name)"
    }
} else {
    # Under plain tclsh there is no host, hence no embed_args.
    puts "embed_args: none (not running under tcletd)"
}
exit 0
