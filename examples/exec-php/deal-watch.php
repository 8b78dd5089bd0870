<?php
// deal-watch: a b24-host exec plugin in plain PHP. The host starts it and talks JSON lines on
// stdin/stdout (one object a line); what it writes to stderr is its log. Protocol: README.md.
ini_set('display_errors', 'stderr');               // PHP's warnings go to the log, not to the host
function send(array $m): void { fwrite(STDOUT, json_encode($m, JSON_UNESCAPED_SLASHES) . "\n"); fflush(STDOUT); }
function receive(): ?array { $line = fgets(STDIN); return $line === false ? null : json_decode($line, true); }
function say(string $level, string $text): void { send(['type' => 'log', 'level' => $level, 'message' => $text]); }

$hello = receive();                                // {"type":"hello","plugin":..,"settings":{..}}
$out = $hello['settings']['out'] ?? 'deals.jsonl'; // [plugin.deal-watch.settings] out = "..."
send(['type' => 'ready']);

while (($event = receive()) !== null && $event['type'] !== 'shutdown') {
    $id = $event['id'];
    $deal = $event['data']['FIELDS']['ID'] ?? null;   // data as PHP's parse_str reads it
    if (!is_string($deal) || !ctype_digit($deal)) { // a bad event: retrying cannot help
        send(['type' => 'reject', 'id' => $id, 'error' => 'no deal id in data[FIELDS][ID]']);
        continue;
    }
    // crm.deal.get on the event's portal, with its tokens: the host makes the call.
    send(['type' => 'rest', 'id' => $id, 'call' => 'deal', 'method' => 'crm.deal.get', 'params' => ['id' => (int) $deal]]);
    do { $answer = receive(); } while ($answer !== null && ($answer['call'] ?? '') !== 'deal');
    if ($answer === null) break;                   // stdin closed: the host is stopping
    if ($answer['type'] === 'rest_error') {
        $why = "crm.deal.get: {$answer['code']} {$answer['description']}";
        $status = $answer['status'] ?? 0;          // 0: the portal could not be reached
        $temporary = $status === 0 || $status === 429 || $status >= 500;
        send(['type' => $temporary ? 'retry' : 'reject', 'id' => $id, 'error' => $why]);
        continue;
    }
    $d = $answer['result'];
    say('info', "deal {$d['ID']} \"{$d['TITLE']}\" is at {$d['STAGE_ID']} ({$event['code']}, attempt {$event['attempt']})");
    $line = ['event_id' => $event['event_id'], 'attempt' => $event['attempt'], 'code' => $event['code'],
             'deal' => $d['ID'], 'title' => $d['TITLE'], 'stage' => $d['STAGE_ID'], 'user' => $event['user'] ?? null];
    file_put_contents($out, json_encode($line, JSON_UNESCAPED_UNICODE) . "\n", FILE_APPEND | LOCK_EX);
    send(['type' => 'done', 'id' => $id]);
}
