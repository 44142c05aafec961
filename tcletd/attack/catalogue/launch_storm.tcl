# attack: launch_storm
# target: the host: hundreds of tclets launched at once, each spinning until a limit ends it
# contained: the host keeps answering (control round trips, neighbours' echoes) while it forks, demotes and ends them
# stopped-by: control-bounds penalty-box deadline
# judge: host-responsive
# count: 300
# quick-count: 60
#
# Launches past the host's worker total are refused (HostFull). Each launched tclet spins; so
# many share the cores that few reach a limit before the deadline, and the tool must end them
# all at once. A tclet ended at a limit puts the site in the penalty box, where its next tclets
# start demoted and at most one a second.
puts started
flush stdout
set i 0
while 1 {incr i}
