#!/usr/bin/env python3
"""deal-watch: a b24-host exec plugin in Python (standard library only). The host starts it and
talks JSON lines on stdin/stdout (one object a line); what it writes to stderr is its log."""
import json
import re
import sys


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def receive():
    line = sys.stdin.readline()
    return json.loads(line) if line else None


hello = receive()  # {"type":"hello","plugin":..,"settings":{..}}
out = hello["settings"].get("out", "deals.jsonl")  # [plugin.deal-watch.settings] out = "..."
send({"type": "ready"})

while (event := receive()) is not None and event["type"] != "shutdown":
    ident = event["id"]
    try:
        deal = event["data"]["FIELDS"]["ID"]  # data as PHP's parse_str reads it
    except (KeyError, TypeError, IndexError):
        deal = None
    if not isinstance(deal, str) or not re.fullmatch(r"[0-9]+", deal):  # a bad event: retrying cannot help
        send({"type": "reject", "id": ident, "error": "no deal id in data[FIELDS][ID]"})
        continue
    # crm.deal.get on the event's portal, with its tokens: the host makes the call.
    send({"type": "rest", "id": ident, "call": "deal", "method": "crm.deal.get", "params": {"id": int(deal)}})
    answer = receive()
    while answer is not None and answer.get("call") != "deal":
        answer = receive()
    if answer is None:  # stdin closed: the host is stopping
        break
    if answer["type"] == "rest_error":
        why = f"crm.deal.get: {answer['code']} {answer['description']}"
        status = answer.get("status", 0)  # 0: the portal could not be reached
        temporary = status == 0 or status == 429 or status >= 500
        send({"type": "retry" if temporary else "reject", "id": ident, "error": why})
        continue
    d = answer["result"]
    send({"type": "log", "level": "info",
          "message": f'deal {d["ID"]} "{d["TITLE"]}" is at {d["STAGE_ID"]} ({event["code"]}, attempt {event["attempt"]})'})
    line = {"event_id": event["event_id"], "attempt": event["attempt"], "code": event["code"],
            "deal": d["ID"], "title": d["TITLE"], "stage": d["STAGE_ID"], "user": event.get("user")}
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
    send({"type": "done", "id": ident})
