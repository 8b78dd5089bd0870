<?php
// A classic Bitrix24 event handler (it reads $_REQUEST as Bitrix24 posts it), put behind
// b24-host's kind = "http" with format = "form". Try it: php -S 127.0.0.1:8080 handler.php
//
// B24_FORWARD_SECRET  the plugin's `secret` in host.toml; when set, each request must carry
//                     a valid Standard Webhooks signature (webhook-id, -timestamp, -signature)
// B24_APP_TOKENS      the JSON file { "<member_id>": "<application token>" } this app keeps
//                     (written at ONAPPINSTALL); default app-tokens.json beside this file
// B24_EVENTS_FILE     where each handled event is appended; default events.jsonl beside it

$body = file_get_contents('php://input');          // the body exactly as Bitrix24 sent it

// 1. The host signed the request: HMAC-SHA256 of "id.timestamp.body", base64, after "v1,".
$secret = getenv('B24_FORWARD_SECRET') ?: '';
if ($secret !== '') {
    $id = $_SERVER['HTTP_WEBHOOK_ID'] ?? '';
    $timestamp = $_SERVER['HTTP_WEBHOOK_TIMESTAMP'] ?? '';
    $key = str_starts_with($secret, 'whsec_') ? base64_decode(substr($secret, 6)) : $secret;
    $expected = 'v1,' . base64_encode(hash_hmac('sha256', "$id.$timestamp.$body", $key, true));
    $valid = false;
    foreach (explode(' ', $_SERVER['HTTP_WEBHOOK_SIGNATURE'] ?? '') as $signature) {
        $valid = $valid || hash_equals($expected, $signature);
    }
    if (!$valid || abs(time() - (int) $timestamp) > 300) {   // 5 minutes, as the spec advises
        http_response_code(401);
        exit('bad signature');
    }
}

// 2. What every Bitrix24 handler does: the event, its data, and the portal's application token.
$event = $_REQUEST['event'] ?? '';
$data = $_REQUEST['data'] ?? [];
$auth = $_REQUEST['auth'] ?? [];
$member = $auth['member_id'] ?? '';
$tokensFile = getenv('B24_APP_TOKENS') ?: __DIR__ . '/app-tokens.json';
$tokens = is_file($tokensFile) ? json_decode(file_get_contents($tokensFile), true) : [];
if ($event === 'ONAPPINSTALL' && !isset($tokens[$member])) {
    $tokens[$member] = $auth['application_token'];            // remember the new portal
    file_put_contents($tokensFile, json_encode($tokens), LOCK_EX);
} elseif (!isset($tokens[$member]) || !hash_equals($tokens[$member], $auth['application_token'] ?? '')) {
    http_response_code(401);
    exit('unknown portal or wrong application token');
}

// 3. The work: here, one line per event.
$line = [
    'event' => $event,
    'id' => $data['FIELDS']['ID'] ?? null,
    'data' => $data,
    'member_id' => $member,
    'user' => $auth['user_id'] ?? null,
    'delivery' => $_SERVER['HTTP_WEBHOOK_ID'] ?? null,        // the host's event id
    'attempt' => $_SERVER['HTTP_WEBHOOK_ATTEMPT'] ?? null,
    'body_sha256' => hash('sha256', $body),
];
file_put_contents(getenv('B24_EVENTS_FILE') ?: __DIR__ . '/events.jsonl', json_encode($line) . "\n", FILE_APPEND | LOCK_EX);
echo 'ok';
