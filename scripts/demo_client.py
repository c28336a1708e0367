#!/usr/bin/python3
"""The HTTP side of scripts/demo: talks to kvstashd's OpenAI-compatible API and prints the table.

Standard library only (urllib, json). Each subcommand does one step and exits 0, or prints
"demo: <what failed>" on stderr and exits 1:

  wait-ready --base URL --pid PID --timeout S    poll /health until 200 (fails if PID dies)
  header                                         the table's column titles
  completion --base URL --prompt-file F --label L --save OUT [--expect cached|disk]
  chat --base URL --context-file F --session NAME --turn 1|2 --label L --save OUT
       [--previous TURN1_OUT] [--expect cached]
  summary --cold OUT1 --warm OUT2 [--disk OUT3] [--session OUT5]

Every response is saved whole (--save) so later steps and the summary can read it.
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

REQUEST_TIMEOUT_S = 600  # a cold ~3,800-token prefill takes seconds; a loaded machine, more
COLUMNS = f"{'step':<44} {'prompt':>7} {'cached':>7} {'dev/host/disk':>15} {'prefilled':>9} {'TTFT ms':>9}"


def fail(message):
    print(f"demo: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def http(method, url, body=None, timeout=REQUEST_TIMEOUT_S):
    """Returns (status, parsed JSON or text). Connection failures raise OSError."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode("utf-8", errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def post(base, path, body):
    url = base.rstrip("/") + path
    try:
        status, reply = http("POST", url, body)
    except OSError as e:  # refused, reset, timed out
        fail(f"POST {url} failed: {e}")
    if status != 200:
        fail(f"POST {url} answered HTTP {status}: {json.dumps(reply)[:2000]}")
    if not isinstance(reply, dict) or "usage" not in reply or "kvstash" not in reply["usage"]:
        fail(f"POST {url}: the response has no usage.kvstash: {json.dumps(reply)[:2000]}")
    return reply


def alive(pid):
    """False once PID has exited (a zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_ready(args):
    url = args.base.rstrip("/") + "/health"
    deadline = time.monotonic() + args.timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not alive(args.pid):
            fail(f"kvstashd (pid {args.pid}) exited before /health answered 200 ({last})")
        try:
            status, reply = http("GET", url, timeout=5)
            if status == 200:
                return
            last = f"HTTP {status} {json.dumps(reply)}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    fail(f"kvstashd did not become ready within {args.timeout:g} s (/health: {last})")


def row(label, reply):
    u = reply["usage"]
    k = u["kvstash"]
    tiers = f"{k['device_tokens']}/{k['host_tokens']}/{k['disk_tokens']}"
    print(f"{label:<44} {u['prompt_tokens']:>7} {k['cached_tokens']:>7} {tiers:>15} "
          f"{k['prefilled_tokens']:>9} {k['ttft_ms']:>9.1f}", flush=True)


def check(label, reply, expect):
    k = reply["usage"]["kvstash"]
    if expect == "cached" and k["cached_tokens"] <= 0:
        fail(f"{label}: expected cached tokens, got none: usage {json.dumps(reply['usage'])}")
    if expect == "disk" and k["disk_tokens"] <= 0:
        fail(f"{label}: expected tokens loaded from disk (disk_tokens > 0), got none: "
             f"usage {json.dumps(reply['usage'])}")


def save(path, reply):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(reply, f)
    os.replace(tmp, path)


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read the saved response {path}: {e}")


def read_text(path):
    try:
        with open(path, "rb") as f:
            # The context was cut at a byte count: drop a split UTF-8 character at its end.
            return f.read().decode("utf-8", errors="ignore")
    except OSError as e:
        fail(f"cannot read {path}: {e}")


def completion(args):
    body = {"model": "default", "prompt": read_text(args.prompt_file),
            "max_tokens": args.max_tokens, "temperature": 0}
    reply = post(args.base, "/v1/completions", body)
    row(args.label, reply)
    check(args.label, reply, args.expect)
    save(args.save, reply)


QUESTION_1 = "How does a KV block reach the disk?"
QUESTION_2 = "And how does it come back after a restart?"


def chat(args):
    # An agent resends the whole conversation every turn; `session` names it, so kvstashd
    # saves it (prompt + reply) and the next turn starts from it.
    messages = [
        {"role": "system", "content": read_text(args.context_file)},
        {"role": "user", "content": QUESTION_1},
    ]
    if args.turn == 2:
        first = load(args.previous)
        try:
            messages.append(first["choices"][0]["message"])
        except (KeyError, IndexError, TypeError):
            fail(f"{args.previous} holds no assistant message: {json.dumps(first)[:500]}")
        messages.append({"role": "user", "content": QUESTION_2})
    body = {"model": "default", "messages": messages, "max_tokens": args.max_tokens,
            "temperature": 0, "session": args.session}
    reply = post(args.base, "/v1/chat/completions", body)
    row(args.label, reply)
    check(args.label, reply, args.expect)
    save(args.save, reply)


def times(x):
    return f"{x:.1f}\u00d7" if x < 10 else f"{x:.0f}\u00d7"


def summary(args):
    def ttft(path):
        return load(path)["usage"]["kvstash"]["ttft_ms"]

    cold, warm = ttft(args.cold), ttft(args.warm)
    print(f"time to first token {cold:.0f} ms cold vs {warm:.0f} ms warm "
          f"({times(cold / max(warm, 1e-3))})")
    if args.disk:
        disk = ttft(args.disk)
        print(f"after a restart, from disk: {disk:.0f} ms ({times(cold / max(disk, 1e-3))} faster "
              f"than cold)")
    if args.session:
        k = load(args.session)["usage"]
        print(f"the session's second turn reused {k['kvstash']['cached_tokens']} of its "
              f"{k['prompt_tokens']} prompt tokens")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait-ready")
    w.add_argument("--base", required=True)
    w.add_argument("--pid", type=int, required=True)
    w.add_argument("--timeout", type=float, default=120)
    sub.add_parser("header")
    c = sub.add_parser("completion")
    c.add_argument("--base", required=True)
    c.add_argument("--prompt-file", required=True)
    c.add_argument("--label", required=True)
    c.add_argument("--save", required=True)
    c.add_argument("--max-tokens", type=int, default=4)
    c.add_argument("--expect", choices=["cached", "disk"])
    h = sub.add_parser("chat")
    h.add_argument("--base", required=True)
    h.add_argument("--context-file", required=True)
    h.add_argument("--session", required=True)
    h.add_argument("--turn", type=int, choices=[1, 2], required=True)
    h.add_argument("--previous")
    h.add_argument("--label", required=True)
    h.add_argument("--save", required=True)
    h.add_argument("--max-tokens", type=int, default=8)
    h.add_argument("--expect", choices=["cached"])
    s = sub.add_parser("summary")
    s.add_argument("--cold", required=True)
    s.add_argument("--warm", required=True)
    s.add_argument("--disk")
    s.add_argument("--session")
    args = p.parse_args()
    if args.cmd == "chat" and args.turn == 2 and not args.previous:
        p.error("chat --turn 2 needs --previous (turn 1's saved response)")
    if args.cmd == "wait-ready":
        wait_ready(args)
    elif args.cmd == "header":
        print(COLUMNS)
        print("-" * len(COLUMNS))
    elif args.cmd == "completion":
        completion(args)
    elif args.cmd == "chat":
        chat(args)
    else:
        summary(args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
