#!/usr/bin/env python3
"""The exec probe: a test-only exec plugin (JSON lines on stdin and stdout) that records what it
receives and misbehaves on command, as tests/plugins/probe does for Rust plugins.

Every line it gets is appended to the file named by the setting `record` (default
`exec-probe.jsonl`, relative to the host's config folder, the program's working folder) as
`{"kind": "hello"|"event"|"rest_answer"|"shutdown"|"spawned", ...}`.

Settings (the `[plugin.NAME.settings]` table, sent in `hello`):
- `start`: `ready` (default), `never` (never answers ready), `exit` (exits with status 2
  before ready), `wait` (answers ready once the file `go` exists in its working folder).
- `gather`: hold this many events (or whatever came within 2 s) and answer them in reverse
  order (for the window tests).

What it does with an event depends on its field name (`field_name`, user-field events):
- `UF_SKIP`: skip; `UF_REJECT`: reject; `UF_RETRY_<n>`: retry while the attempt is below n;
- `UF_REST`: calls `crm.deal.userfield.get` with the event's field id through the host, records
  the answer, then done;
- `UF_LOG`: a log line per level, then done;
- `UF_EXIT`: exits with status 3 before answering; `UF_HANG`: never answers (sleeps);
- `UF_FLOOD`: 20,000 lines on stdout and as many on stderr, then done;
- `UF_GARBAGE`: broken and foreign lines on stdout, then done;
- `UF_HUGE`: one 50 MB line on stdout, then done;
- `UF_SPAWN`: starts two `sleep 1000` children (recorded as `spawned` with their pids), then
  done;
- anything else: done.
"""

import json
import os
import subprocess
import sys
import time

out = sys.stdout


def send(message):
    out.write(json.dumps(message) + "\n")
    out.flush()


_pending = b""


def read():
    """The next line from the host, read with os.read into our own buffer (not sys.stdin's), so
    that `buffered()` and select() together say truly whether another line is at hand."""
    global _pending
    while b"\n" not in _pending:
        chunk = os.read(0, 65536)
        if not chunk:
            return None
        _pending += chunk
    line, _pending = _pending.split(b"\n", 1)
    return json.loads(line)


def buffered():
    return b"\n" in _pending


hello = read()
settings = hello.get("settings") or {}
record_path = settings.get("record", "exec-probe.jsonl")


def note(entry):
    with open(record_path, "a") as f:
        f.write(json.dumps(entry) + "\n")


note({"kind": "hello", "hello": hello, "pid": os.getpid(), "env": dict(os.environ), "cwd": os.getcwd()})

start = settings.get("start", "ready")
if start == "exit":
    sys.stderr.write("probe: exiting before ready, as told\n")
    sys.exit(2)
if start == "never":
    while True:
        time.sleep(3600)
if start == "wait":
    while not os.path.exists("go"):
        time.sleep(0.05)
send({"type": "ready", "version": "probe-1"})

waiting = []  # lines read while waiting for a REST answer
rest_calls = 0


def next_message():
    if waiting:
        return waiting.pop(0)
    return read()


def rest(event_id, method, params):
    global rest_calls
    rest_calls += 1
    call = "c%d" % rest_calls
    send({"type": "rest", "id": event_id, "call": call, "method": method, "params": params})
    while True:
        message = read()
        if message is None:
            sys.exit(0)
        if message.get("call") == call and message["type"] in ("rest_result", "rest_error"):
            return message
        waiting.append(message)


def answer(event):
    name = event.get("field_name", "")
    ident = event["id"]
    attempt = event["attempt"]
    if name == "UF_SKIP":
        return {"type": "skip", "id": ident}
    if name == "UF_REJECT":
        return {"type": "reject", "id": ident, "error": "rejected by the probe"}
    if name.startswith("UF_RETRY_"):
        wanted = int(name[len("UF_RETRY_"):])
        if attempt < wanted:
            return {"type": "retry", "id": ident, "error": "attempt %d of %d" % (attempt, wanted)}
        return {"type": "done", "id": ident}
    if name == "UF_REST":
        got = rest(ident, "crm.deal.userfield.get", {"id": event.get("field_id")})
        note({"kind": "rest_answer", "event_id": event["event_id"], "answer": got})
        return {"type": "done", "id": ident}
    if name == "UF_LOG":
        for level in ("error", "warn", "info", "debug"):
            send({"type": "log", "level": level, "message": "probe %s line of event %d" % (level, event["event_id"])})
        return {"type": "done", "id": ident}
    if name == "UF_EXIT":
        sys.exit(3)
    if name == "UF_HANG":
        while True:
            time.sleep(3600)
    if name == "UF_FLOOD":
        for i in range(20000):
            out.write("flood line %d\n" % i)
            sys.stderr.write("flood error %d\n" % i)
        out.flush()
        return {"type": "done", "id": ident}
    if name == "UF_GARBAGE":
        out.write("not json at all\n")
        out.write("{\"type\": \"done\", \"id\": \n")
        out.write("[1, 2, 3]\n")
        out.write("{\"type\": \"teleport\"}\n")
        out.write("{\"type\": \"done\", \"id\": \"999999999\"}\n")
        out.buffer.write(b"\xff\xfe binary \x00\x01\n")
        out.flush()
        return {"type": "done", "id": ident}
    if name == "UF_HUGE":
        chunk = "x" * (1 << 20)
        for _ in range(50):
            out.write(chunk)
        out.write("\n")
        out.flush()
        return {"type": "done", "id": ident}
    if name == "UF_SPAWN":
        pids = [subprocess.Popen(["sleep", "1000"]).pid for _ in range(2)]
        note({"kind": "spawned", "event_id": event["event_id"], "pids": pids})
        return {"type": "done", "id": ident}
    return {"type": "done", "id": ident}


gather = int(settings.get("gather", 0))
held = []
while True:
    message = next_message()
    if message is None:
        note({"kind": "eof"})
        break
    if message["type"] == "shutdown":
        note({"kind": "shutdown"})
        continue
    if message["type"] != "event":
        continue
    note({"kind": "event", "event_id": message["event_id"], "attempt": message["attempt"],
          "field_id": message.get("field_id"), "id": message["id"], "event": message})
    if gather:
        held.append(message)
        deadline = time.time() + 2
        while len(held) < gather and time.time() < deadline:
            import select
            ready = buffered() or select.select([0], [], [], 0.05)[0]
            if ready:
                more = read()
                if more is None:
                    break
                if more["type"] == "event":
                    note({"kind": "event", "event_id": more["event_id"], "attempt": more["attempt"],
                          "field_id": more.get("field_id"), "id": more["id"], "event": more})
                    held.append(more)
        note({"kind": "batch", "size": len(held)})
        for event in reversed(held):
            send(answer(event))
        held = []
        continue
    send(answer(message))
