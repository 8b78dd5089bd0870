// deal-watch: a b24-host exec plugin in Node.js (no npm packages). The host starts it and talks
// JSON lines on stdin/stdout (one object a line); what it writes to stderr is its log.
const fs = require('node:fs');
const readline = require('node:readline');

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const send = (message) => process.stdout.write(JSON.stringify(message) + '\n'); // pipes: written at once
const receive = async () => { const next = await lines.next(); return next.done ? null : JSON.parse(next.value); };

(async () => {
  const hello = await receive(); // {"type":"hello","plugin":..,"settings":{..}}
  const out = hello.settings.out ?? 'deals.jsonl'; // [plugin.deal-watch.settings] out = "..."
  send({ type: 'ready' });
  let event;
  while ((event = await receive()) !== null && event.type !== 'shutdown') {
    const id = event.id;
    const deal = event.data?.FIELDS?.ID; // data as PHP's parse_str reads it
    if (typeof deal !== 'string' || !/^\d+$/.test(deal)) { // a bad event: retrying cannot help
      send({ type: 'reject', id, error: 'no deal id in data[FIELDS][ID]' });
      continue;
    }
    // crm.deal.get on the event's portal, with its tokens: the host makes the call.
    send({ type: 'rest', id, call: 'deal', method: 'crm.deal.get', params: { id: Number(deal) } });
    let answer;
    do { answer = await receive(); } while (answer !== null && answer.call !== 'deal');
    if (answer === null) break; // stdin closed: the host is stopping
    if (answer.type === 'rest_error') {
      const status = answer.status ?? 0; // 0: the portal could not be reached
      const temporary = status === 0 || status === 429 || status >= 500;
      send({ type: temporary ? 'retry' : 'reject', id, error: `crm.deal.get: ${answer.code} ${answer.description}` });
      continue;
    }
    const d = answer.result;
    send({ type: 'log', level: 'info', message: `deal ${d.ID} "${d.TITLE}" is at ${d.STAGE_ID} (${event.code}, attempt ${event.attempt})` });
    const line = { event_id: event.event_id, attempt: event.attempt, code: event.code,
      deal: d.ID, title: d.TITLE, stage: d.STAGE_ID, user: event.user ?? null };
    fs.appendFileSync(out, JSON.stringify(line) + '\n');
    send({ type: 'done', id });
  }
  process.exit(0);
})();
