<?php
// The load benchmark's exec plugin (bench/load.sh, point 7): the least a PHP exec plugin does.
// It reads the host's JSON lines on stdin, answers `ready` to `hello` and `done` to every
// event, and ends when stdin closes.
$hello = json_decode(fgets(STDIN), true);
fwrite(STDOUT, "{\"type\":\"ready\"}\n");
while (($line = fgets(STDIN)) !== false) {
    $message = json_decode($line, true);
    if ($message['type'] === 'event') {
        fwrite(STDOUT, '{"type":"done","id":' . json_encode($message['id']) . "}\n");
    }
}
