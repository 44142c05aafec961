#!/usr/bin/perl
# tcletd-client.pl: a client of a resident tcletd host (tcletd serve), written from
# docs/protocol.md alone, in Perl with nothing beyond perl-base (IO::Socket::UNIX; no JSON
# module: JSON is written by hand with its strings escaped, and replies are picked apart with
# regexes on the fields the protocol documents).
#
#   perl examples/tcletd-client.pl SOCKET launch FILE [ARG...]   prints the new tclet's id
#   perl examples/tcletd-client.pl SOCKET ps [--all]             one line per tclet
#   perl examples/tcletd-client.pl SOCKET wait ID                exits with the tclet's status
#   perl examples/tcletd-client.pl SOCKET logs ID                its output, on stdout and stderr
#
# SOCKET is the host's control socket (tcletd serve prints it). An error from the host is
# printed on stderr and the client exits with the status the host gave (docs/protocol.md,
# "Errors"); 69 when no host answers at SOCKET, 2 for bad usage. TCLETD_CLIENT_PROTOCOL sets the
# version the hello names (default 1: the one this client speaks), to see a host refuse another.

use strict;
use warnings;
use IO::Socket::UNIX;

my $PROTOCOL = $ENV{TCLETD_CLIENT_PROTOCOL} // 1;
my $USAGE = "usage: $0 SOCKET launch FILE [ARG...] | ps [--all] | wait ID | logs ID\n";

$SIG{PIPE} = 'IGNORE';    # a host that hung up: our write fails, and its error frame says why

# ---- JSON, by hand -------------------------------------------------------------------------

# A JSON string literal of $text (bytes, passed through: UTF-8 in, UTF-8 out). JSON requires
# escaping the quote, the backslash and every control character below 0x20.
sub json_string {
    my ($text) = @_;
    $text =~ s/(["\\])/\\$1/g;
    $text =~ s/\n/\\n/g;
    $text =~ s/\t/\\t/g;
    $text =~ s/\r/\\r/g;
    $text =~ s/([\x00-\x1f])/sprintf('\\u%04x', ord $1)/ge;
    return qq("$text");
}

# The text of a JSON string literal's body (without its quotes), unescaped, as UTF-8 bytes.
sub json_unescape {
    my ($body) = @_;
    my %simple = ('"' => '"', '\\' => '\\', '/' => '/', b => "\b", f => "\f", n => "\n",
        r => "\r", t => "\t");
    # One pass, left to right: a surrogate pair (a character past U+FFFF), one \uXXXX, or one
    # of the simple escapes.
    $body =~ s{\\(?:u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})
                  |u([0-9a-fA-F]{4})|(.))}
              {defined $1 ? utf8_bytes(0x10000 + ((hex($1) - 0xD800) << 10) + (hex($2) - 0xDC00))
               : defined $3 ? utf8_bytes(hex $3) : $simple{$4}}gex;
    return $body;
}

sub utf8_bytes {
    my ($code) = @_;
    my $char = chr $code;
    utf8::encode($char);
    return $char;
}

# A string field of a flat JSON object, unescaped; undef when absent (or not a string).
sub string_field {
    my ($json, $name) = @_;
    return $json =~ /"\Q$name\E":"((?:[^"\\]|\\.)*)"/s ? json_unescape($1) : undef;
}

# A number, true, false or null field, as its JSON text; undef when absent.
sub scalar_field {
    my ($json, $name) = @_;
    return $json =~ /"\Q$name\E":(-?[0-9][0-9.eE+-]*|true|false|null)/ ? $1 : undef;
}

# The objects of the array that is field $name's value (ps rows: flat objects), each as its
# JSON text. Strings are skipped whole, so a brace inside one cannot confuse the split.
sub objects_in {
    my ($json, $name) = @_;
    return () unless $json =~ /"\Q$name\E":\[/g;
    my ($depth, $start, @objects) = (0, 0);
    while ($json =~ /\G(?:"(?:[^"\\]|\\.)*"|([{}\]])|[^"{}\]]+)/gs) {
        my $mark = $1 // next;
        if ($mark eq '{') {
            $start = pos($json) - 1 if $depth++ == 0;
        } elsif ($mark eq '}') {
            push @objects, substr($json, $start, pos($json) - $start) if --$depth == 0;
        } elsif ($depth == 0) {
            last;    # the array's closing bracket
        }
    }
    return @objects;
}

# ---- frames --------------------------------------------------------------------------------

my $sock;
my $buffer = '';

sub connect_host {
    my ($path) = @_;
    $sock = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $path);
    unless ($sock) {
        print STDERR "tcletd-client: cannot reach a tcletd host at $path: $!\n";
        exit 69;
    }
    binmode $sock;
}

# Send frames: each a header (JSON text, one line) and an optional payload.
sub send_frames {
    my $bytes = '';
    while (my ($header, $payload) = splice @_, 0, 2) {
        $bytes .= "$header\n" . ($payload // '');
    }
    while (length $bytes) {
        my $sent = syswrite $sock, $bytes;
        return unless defined $sent;    # the host hung up: read its error
        substr($bytes, 0, $sent) = '';
    }
}

# The next frame from the host: (header JSON text, payload bytes); undef at end of stream.
sub read_frame {
    until ($buffer =~ /\n/) {
        return unless sysread $sock, $buffer, 65536, length $buffer;
    }
    $buffer =~ s/^([^\n]*)\n//;
    my $header = $1;
    my $size = scalar_field($header, 'size') // 0;
    while (length $buffer < $size) {
        return unless sysread $sock, $buffer, 65536, length $buffer;
    }
    my $payload = substr $buffer, 0, $size, '';
    return ($header, $payload);
}

# The host's next frame that is not its greeting; an error ends this client with its status.
sub reply {
    while (my ($header, $payload) = read_frame()) {
        my $event = string_field($header, 'event') // '';
        next if $event eq 'hello';
        if ($event eq 'error') {
            print STDERR 'tcletd-client: ', string_field($header, 'message'), "\n";
            exit(scalar_field($header, 'status') // 70);
        }
        return ($event, $header, $payload);
    }
    print STDERR "tcletd-client: the tcletd host closed the connection\n";
    exit 69;
}

sub hello { return qq({"op":"hello","protocol":$PROTOCOL}) }

# ---- commands ------------------------------------------------------------------------------

sub launch {
    my ($file, @argv) = @_;
    open my $in, '<:raw', $file or do { print STDERR "tcletd-client: $file: $!\n"; exit 66 };
    my $script = do { local $/; <$in> };
    close $in;
    my $args = join ',', map { json_string($_) } @argv;
    my $header = sprintf '{"op":"launch","script_name":%s,"argv":[%s],"size":%d}',
        json_string($file), $args, length $script;
    send_frames(hello(), undef, $header, $script);
    my ($event, $reply) = reply();
    die "tcletd-client: expected launched, got $event\n" unless $event eq 'launched';
    print string_field($reply, 'id'), "\n";
    return 0;
}

sub ps {
    my @flags = @_;
    my $all = (@flags && $flags[0] eq '--all') ? 'true' : 'false';
    send_frames(hello(), undef, qq({"op":"ps","all":$all}));
    while (1) {  # a long listing comes in several frames, each but the last with "more":true
        my ($event, $reply) = reply();
        for my $row (objects_in($reply, 'tclets')) {
            printf "%s %-8s %-8s %s %s\n", string_field($row, 'id'), string_field($row, 'state'),
                string_field($row, 'policy'), scalar_field($row, 'status'),
                string_field($row, 'script');
        }
        return 0 unless $reply =~ /^\{"event":"ps","more":true,/;
    }
}

sub wait_for {
    my ($id) = @_;
    send_frames(hello(), undef, sprintf '{"op":"wait","id":%s}', json_string($id));
    my ($event, $reply) = reply();
    if ((scalar_field($reply, 'by_host') // '') eq 'true') {
        print STDERR 'tcletd-client: tclet ended: ', string_field($reply, 'reason'), "\n";
    }
    return scalar_field($reply, 'status');
}

sub logs {
    my ($id) = @_;
    send_frames(hello(), undef, sprintf '{"op":"logs","id":%s}', json_string($id));
    binmode STDOUT;
    binmode STDERR;
    while (1) {
        my ($event, $header, $payload) = reply();
        if ($event eq 'stdout') {
            print STDOUT $payload;
        } elsif ($event eq 'stderr') {
            print STDERR $payload;
        } elsif ($event eq 'dropped') {
            print STDERR 'tcletd-client: ', scalar_field($header, 'bytes'),
                " earlier bytes were not kept\n";
        } elsif ($event eq 'eof') {
            return 0;
        }
    }
}

my ($path, $command, @rest) = @ARGV;
if (!defined $command) { print STDERR $USAGE; exit 2 }
my %commands = (
    launch => [\&launch, 1],
    ps => [\&ps, 0],
    wait => [\&wait_for, 1],
    logs => [\&logs, 1],
);
my $known = $commands{$command};
if (!$known || @rest < $known->[1]) { print STDERR $USAGE; exit 2 }
connect_host($path);
exit $known->[0]->(@rest);
