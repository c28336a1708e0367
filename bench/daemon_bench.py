#!/usr/bin/python3
"""daemon_bench: kvstashd beside llama.cpp's llama-server, end to end over HTTP.

Usage (standard library only; run with /usr/bin/python3 from the repository root):

  /usr/bin/python3 bench/daemon_bench.py \\
      [--model /work/bench-models/qwen3-0.6b-q8_0.gguf] [--kvstashd build/bin/kvstashd] \\
      [--llama-server /work/peer/llama.cpp/build/bin/llama-server] [--work DIR] \\
      [--questions agent-fleet,overhead,concurrency] [--json [FILE]] [--quick]

  Smoke run: --quick --model /work/shared/models/stories260K.gguf (2 agents x 4 turns, 512-token
  context, restart after turn 2, 3 repetitions, clients 1,2). Without --llama-server the peer
  columns are "-". Tables go to stdout, progress to stderr; `--json` alone prints one JSON
  document on stdout instead of the tables (which then go to stderr), `--json FILE` writes it.

Questions:
  agent-fleet  8 agents x 10 turns over one shared 4,096-token "repository context", round-robin,
               greedy /v1/completions (max_tokens 16, streamed). Every server is restarted after
               turn 5 (kvstashd: SIGTERM + start on the same --cache-dir; llama-server: stop +
               start, its RAM prompt cache is gone). The cached kvstashd runs first: its answers
               define the conversation, so every server sees byte-identical prompts. A cache-off
               kvstashd (--no-cache) replays them last (it times nothing, so the timed runs get
               the quiet machine) and kvstashd's cached answers must equal its. Per phase: tokens prefilled
               (kvstash usage.kvstash.prefilled_tokens, llama timings.prompt_n), client-side
               p50/p95 TTFT (send -> first SSE chunk with non-empty text), wall time.
  overhead     a fully cached prompt (~2,000 tokens), non-streamed, max_tokens 1: client wall time
               minus the daemon's own usage.kvstash.ttft_ms = what HTTP + JSON + scheduling add.
  concurrency  aggregate generated tokens/s with 1, 4, 16 concurrent streaming clients (distinct
               ~200-token prompts, max_tokens 64, temperature 0): kvstashd --parallel 16 vs
               llama-server -np N -c N*1024 (restarted per N).

Only one server runs at a time. Server logs are kept under --work (default: a temp dir, removed
unless --keep-work or a question failed). The model's sampled tokens must print text: with a
vocabulary of <unused_N> pieces (older kvstash-mkmodel output) every answer is "", client TTFT
falls back to the first SSE chunk of any kind and the answer check is inconclusive (said so).
"""

import argparse
import atexit
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = "/work/bench-models/qwen3-0.6b-q8_0.gguf"
DEFAULT_KVSTASHD = os.path.join(REPO_ROOT, "build", "bin", "kvstashd")
ALL_QUESTIONS = ("agent-fleet", "overhead", "concurrency")


class BenchError(Exception):
    pass


def log(msg):
    print(f"[daemon_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Processes: every child is registered so that atexit / signals always take it down.

_LIVE = {}  # pid -> Popen
_LIVE_LOCK = threading.Lock()


def _register(p):
    with _LIVE_LOCK:
        _LIVE[p.pid] = p


def _unregister(p):
    with _LIVE_LOCK:
        _LIVE.pop(p.pid, None)


def _end_process(p, sig=signal.SIGTERM, grace_s=10.0):
    """Signals p (by its pid) and waits; SIGKILL after grace_s. Returns (rc, killed)."""
    killed = False
    if p.poll() is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            killed = True
            try:
                p.kill()
            except ProcessLookupError:
                pass
            p.wait()
    _unregister(p)
    return p.returncode, killed


def _kill_all():
    with _LIVE_LOCK:
        procs = list(_LIVE.values())
    for p in procs:
        _end_process(p, grace_s=3.0)


atexit.register(_kill_all)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks, then atexit


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=25):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------------------------
# HTTP

def http_json(host, port, method, path, body=None, timeout=600.0):
    """Returns (status, parsed body or text, wall seconds from send to the whole reply read)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        t0 = time.perf_counter()
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        wall = time.perf_counter() - t0
        text = raw.decode("utf-8", errors="replace")
        try:
            return resp.status, json.loads(text), wall
        except ValueError:
            return resp.status, text, wall
    finally:
        conn.close()


def stream_completion(host, port, body, timeout=900.0):
    """POSTs a streamed /v1/completions. TTFT = send -> first SSE data chunk with non-empty text.

    Returns {text, ttft_s, wall_s, usage, timings, finish, empty_first}."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = json.dumps(body).encode()
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", body=payload,
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            raw = resp.read().decode("utf-8", errors="replace")
            raise BenchError(f"HTTP {resp.status} from :{port}/v1/completions: {raw[:1000]}")
        pieces, usage, timings, finish = [], None, None, None
        ttft = None
        first_chunk = None
        done = False
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators and ": ping" comments
            data = line[5:].strip()
            now = time.perf_counter() - t0
            if data == b"[DONE]":
                done = True
                break
            try:
                obj = json.loads(data)
            except ValueError:
                raise BenchError(f"unparsable SSE data from :{port}: {data[:300]!r}")
            if "error" in obj:
                raise BenchError(f"error in the stream from :{port}: {json.dumps(obj)[:1000]}")
            if first_chunk is None:
                first_chunk = now
            for ch in obj.get("choices") or []:
                t = ch.get("text") or ""
                if t:
                    if ttft is None:
                        ttft = now
                    pieces.append(t)
                if ch.get("finish_reason"):
                    finish = ch["finish_reason"]
            if obj.get("usage"):
                usage = obj["usage"]
            if obj.get("timings"):
                timings = obj["timings"]
        wall = time.perf_counter() - t0
        if not done:
            raise BenchError(f"stream from :{port} ended without data: [DONE]")
        empty = ttft is None
        if empty:  # no text at all (EOS first): the first chunk is the best we have
            ttft = first_chunk if first_chunk is not None else wall
        return {"text": "".join(pieces), "ttft_s": ttft, "wall_s": wall, "usage": usage,
                "timings": timings, "finish": finish, "no_text": empty}
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------
# Servers

class Server:
    kind = "?"

    def __init__(self, label, argv, work, ready_timeout):
        self.label = label
        self.argv = argv
        self.work = work
        self.ready_timeout = ready_timeout
        self.proc = None
        self.host = "127.0.0.1"
        self.port = None
        self.starts = 0
        self.stop_rcs = []
        self.ready_s = []  # seconds from spawn to /health 200, per start
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        self.log_path = os.path.join(work, f"{safe}.log")

    def _wait_health(self, t0):
        deadline = t0 + self.ready_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label} exited with {self.proc.returncode} before /health "
                                 f"answered ({last}); log {self.log_path}:\n{tail(self.log_path)}")
            if self.port is not None:
                try:
                    st, b, _ = http_json(self.host, self.port, "GET", "/health", timeout=5)
                    if st == 200:
                        return
                    last = f"HTTP {st} {str(b)[:200]}"
                except OSError as e:
                    last = str(e)
            time.sleep(0.05)
        raise BenchError(f"{self.label}: /health not 200 within {self.ready_timeout:.0f} s "
                         f"({last}); log {self.log_path}:\n{tail(self.log_path)}")

    def stop(self):
        if self.proc is None:
            return None
        rc, killed = _end_process(self.proc, signal.SIGTERM, grace_s=60.0)
        self.stop_rcs.append("SIGKILL after 60 s" if killed else rc)
        self.proc = None
        self.port = None
        return rc

    def restart(self):
        self.stop()
        self.start()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class Kvstashd(Server):
    kind = "kvstashd"
    LISTEN = re.compile(rb"listening on http://([0-9.]+):(\d+)")

    def start(self):
        self.port = None
        found = threading.Event()
        logf = open(self.log_path, "ab")
        logf.write(f"\n=== start #{self.starts + 1}: {' '.join(self.argv)}\n".encode())
        logf.flush()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv + ["--port", "0"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=logf)
        _register(self.proc)
        logf.close()  # the child holds its own descriptor
        proc = self.proc
        out_path = self.log_path + ".stdout"

        def pump():
            with open(out_path, "ab") as out:
                for line in proc.stdout:
                    out.write(line)
                    out.flush()
                    m = self.LISTEN.search(line)
                    if m and not found.is_set():
                        self.host, self.port = m.group(1).decode(), int(m.group(2))
                        found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(self.ready_timeout) or self.port is None:
            rc = proc.poll()
            raise BenchError(f"{self.label} printed no 'listening on' line (rc={rc}); log "
                             f"{self.log_path}:\n{tail(self.log_path)}")
        self._wait_health(t0)
        self.ready_s.append(time.monotonic() - t0)
        self.starts += 1
        log(f"{self.label} ready on :{self.port} in {self.ready_s[-1]:.2f} s (pid {proc.pid})")


class LlamaServer(Server):
    kind = "llama-server"

    def start(self):
        for attempt in range(3):
            self.port = free_port()
            logf = open(self.log_path, "ab")
            argv = self.argv + ["--host", "127.0.0.1", "--port", str(self.port)]
            logf.write(f"\n=== start #{self.starts + 1}: {' '.join(argv)}\n".encode())
            logf.flush()
            t0 = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT)
            _register(self.proc)
            logf.close()
            try:
                self._wait_health(t0)
            except BenchError:
                if self.proc.poll() is not None and attempt < 2 and \
                        "bind" in tail(self.log_path, 10).lower():
                    _end_process(self.proc)
                    log(f"{self.label}: port {self.port} taken, trying another")
                    continue
                raise
            self.ready_s.append(time.monotonic() - t0)
            self.starts += 1
            log(f"{self.label} ready on :{self.port} in {self.ready_s[-1]:.2f} s "
                f"(pid {self.proc.pid})")
            return


def kvstashd_server(args, label, extra, work):
    # HTTP only: several daemons run at once and the default socket path is one per user.
    argv = [args.kvstashd, "-m", args.model, "-t", str(args.threads), "--log-level", "info",
            "--socket", "none"] + extra
    return Kvstashd(label, argv, work, args.ready_timeout)


def llama_server(args, label, n_parallel, ctx, work):
    argv = [args.llama_server, "-m", args.model, "-t", str(args.threads), "-np", str(n_parallel),
            "-c", str(ctx)]
    return LlamaServer(label, argv, work, args.ready_timeout)


def reply_numbers(kind, r):
    """(prompt tokens, prefilled tokens, cached tokens, server-side TTFT ms, generated tokens)."""
    u = r.get("usage") or {}
    if kind == "kvstashd":
        k = u.get("kvstash") or {}
        return (u.get("prompt_tokens"), k.get("prefilled_tokens"), k.get("cached_tokens"),
                k.get("ttft_ms"), u.get("completion_tokens"))
    t = r.get("timings") or {}
    pn, cn = t.get("prompt_n"), t.get("cache_n")
    ptok = u.get("prompt_tokens")
    if ptok is None and pn is not None and cn is not None:
        ptok = pn + cn
    return ptok, pn, cn, t.get("prompt_ms"), t.get("predicted_n", u.get("completion_tokens"))


# ----------------------------------------------------------------------------------------------
# Statistics and formatting

def pct(values, p):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def met(ok):
    if ok is None:
        return "- (no peer)"
    return "met" if ok else "NOT met"


# ----------------------------------------------------------------------------------------------
# Deterministic text

WORDS = (
    "cache block prefix token layer tensor kernel thread buffer queue index segment vector "
    "matrix stream record header payload offset length config option value default module "
    "function method class struct field pointer handle status error result request reply "
    "server client socket parse render encode decode hash table entry bucket shard commit "
    "branch merge rebase patch review test bench build target source include namespace "
    "template lambda closure iterator range slice array string number integer float double "
    "boolean null return yield await async lock mutex atomic barrier signal event timer clock "
    "metric counter gauge histogram sample batch slot page pool arena alloc free copy move "
    "swap sort search filter map reduce fold scan split join trim strip lower upper format "
    "print write read open close flush sync seek mmap file path directory device host disk "
    "memory network packet frame window scroll click input output model weight bias scale "
    "rope attention head embed norm gate proxy route worker leader follower replica quorum "
    "the a of to in and is for on with as by at from that this it be are was or not"
).split()


def words(rng, n):
    return [rng.choice(WORDS) for _ in range(n)]


def repo_text(rng, n_words):
    """Pseudo-code lines: `path: words...` so it reads like a repository dump."""
    lines, left = [], n_words
    while left > 0:
        k = min(left, rng.randint(6, 14))
        ws = words(rng, k)
        path = f"src/{rng.choice(WORDS)}/{rng.choice(WORDS)}.cc"
        lines.append(f"{path}: " + " ".join(ws))
        left -= k
    return "\n".join(lines)


class Tokenizer:
    def __init__(self, server):
        self.server = server

    def count(self, text):
        st, b, _ = http_json(self.server.host, self.server.port, "POST", "/tokenize",
                             {"content": text}, timeout=120)
        if st != 200 or not isinstance(b, dict) or "tokens" not in b:
            raise BenchError(f"/tokenize answered {st}: {str(b)[:300]}")
        return len(b["tokens"])


def text_of_tokens(tok, seed, target, maker):
    """maker(rng, n_words) -> text; the number of words is searched so the text has ~target
    tokens (the same seed gives the same words). Returns (text, tokens)."""
    lo, hi = 1, max(4, target)
    best = None
    while lo <= hi:  # largest n_words with tokens <= target
        mid = (lo + hi) // 2
        t = maker(random.Random(seed), mid)
        n = tok.count(t)
        if n <= target:
            best = (t, n)
            lo = mid + 1
        else:
            hi = mid - 1
    if best is None:
        t = maker(random.Random(seed), 1)
        best = (t, tok.count(t))
    return best


# ----------------------------------------------------------------------------------------------
# Question 1: agent fleet

class Fleet:
    def __init__(self, tok, n_agents, n_turns, ctx_tokens, msg_tokens, seed=1234):
        self.n_agents, self.n_turns = n_agents, n_turns
        log(f"agent-fleet: building a {ctx_tokens}-token context and {n_agents}x{n_turns} "
            f"~{msg_tokens}-token user messages")
        self.context, self.context_tokens = text_of_tokens(tok, seed, ctx_tokens, repo_text)
        # words per token from a sample message; messages are then made by word count
        sample, sample_tokens = text_of_tokens(
            tok, seed + 1, msg_tokens, lambda r, n: " ".join(words(r, n)))
        n_words = max(1, len(sample.split()))
        self.messages = {}
        for a in range(n_agents):
            for t in range(n_turns):
                rng = random.Random(seed * 1000 + a * 100 + t + 7)
                self.messages[a, t] = " ".join(words(rng, n_words))
        self.msg_tokens = sample_tokens
        self.answers = {}  # (agent, turn) -> the answer the first server (cached kvstashd) gave

    def prompt(self, a, t):
        parts = [self.context, f"\n\n# Session of agent {a + 1}\n"]
        for k in range(t):
            parts.append(f"\nUser: {self.messages[a, k]}\nAssistant:{self.answers[a, k]}\n")
        parts.append(f"\nUser: {self.messages[a, t]}\nAssistant:")
        return "".join(parts)


def run_fleet_on(server, fleet, restart_after, max_tokens, defines_history, model_name,
                 only_turns=None):
    """Replays the round-robin sequence against a started server. Returns per-request records.
    `only_turns` (0-based): send only those turns' requests (the reference needs no history of
    its own: the prompts carry the cached run's answers)."""
    recs = []
    phase_t0 = {}
    phase_end = {}
    for t in range(fleet.n_turns):
        if t == restart_after:
            log(f"{server.label}: restart after turn {restart_after}")
            server.restart()
        phase = 1 if t < restart_after else 2
        phase_t0.setdefault(phase, time.perf_counter())
        for a in range(fleet.n_agents):
            if only_turns is not None and t not in only_turns:
                continue
            body = {"model": model_name, "prompt": fleet.prompt(a, t), "max_tokens": max_tokens,
                    "temperature": 0}
            r = stream_completion(server.host, server.port, body)
            ptok, pre, cached, s_ttft, gen = reply_numbers(server.kind, r)
            recs.append({"agent": a, "turn": t, "phase": phase,
                         "first_after_restart": t == restart_after,
                         "prompt_tokens": ptok, "prefilled": pre, "cached": cached,
                         "server_ttft_ms": s_ttft, "generated": gen,
                         "ttft_ms": r["ttft_s"] * 1e3, "wall_ms": r["wall_s"] * 1e3,
                         "t_end": time.perf_counter(), "text": r["text"],
                         "no_text": r["no_text"], "finish": r["finish"],
                         "usage": r["usage"], "timings": r["timings"]})
            if defines_history:
                fleet.answers[a, t] = r["text"]
            log(f"{server.label}: turn {t + 1} agent {a + 1}: prompt {ptok} prefilled {pre} "
                f"cached {cached} TTFT {r['ttft_s'] * 1e3:.1f} ms")
        phase_end[phase] = time.perf_counter()
    # wall of each phase: from its first send to its last reply (restart time excluded)
    walls = {p: phase_end[p] - phase_t0[p] for p in phase_t0}
    firsts = [r for r in recs if r["first_after_restart"]]
    if firsts:
        start = min(r["t_end"] - r["wall_ms"] / 1e3 for r in firsts)
        walls[3] = max(r["t_end"] for r in firsts) - start
    return recs, walls


def summarize_phase(recs, wall_s):
    if not recs:
        return None

    def total(key):
        vals = [r[key] for r in recs]
        return None if any(v is None for v in vals) else sum(vals)

    return {"requests": len(recs), "prompt_tokens": total("prompt_tokens"),
            "prefilled_tokens": total("prefilled"), "cached_tokens": total("cached"),
            "ttft_p50_ms": pct([r["ttft_ms"] for r in recs], 50),
            "ttft_p95_ms": pct([r["ttft_ms"] for r in recs], 95),
            "server_ttft_p50_ms": pct([r["server_ttft_ms"] for r in recs], 50),
            "wall_s": wall_s, "no_text_replies": sum(1 for r in recs if r["no_text"])}


def q_agent_fleet(args, work, out):
    n_agents, n_turns, ctx_tokens, restart_after = args.agents, args.turns, args.context_tokens, \
        args.restart_after
    if not 0 < restart_after < n_turns:
        raise BenchError("--restart-after must lie between 1 and --turns - 1")
    model_name = os.path.basename(args.model)
    runs = {}  # label -> (kind, recs, walls, server)

    fleet = None
    # The cached kvstashd runs first and its answers become the conversation history that every
    # later server replays (the same prompts for all three). The cache-off reference, which only
    # checks answers and times nothing, runs last, so the timed runs can have a quiet machine
    # and the long reference run need not.
    for label, role in (("kvstashd", "cache"), ("llama-server", "peer"),
                        ("kvstashd --no-cache", "reference")):
        if role == "peer" and not args.llama_server:
            continue
        if role == "reference" and args.no_reference:
            log("agent-fleet: no cache-off reference (--reference-turns none): answers unchecked")
            continue
        if role == "reference":
            srv = kvstashd_server(args, label, ["--parallel", "8", "-c", "8192", "--no-cache",
                                                "--cache-dir", os.path.join(work, "no-cache")],
                                  work)
        elif role == "cache":
            cache_dir = os.path.join(work, "fleet-cache")
            shutil.rmtree(cache_dir, ignore_errors=True)
            srv = kvstashd_server(args, label, ["--parallel", "8", "-c", "8192", "--cache-dir",
                                                cache_dir], work)
        else:
            srv = llama_server(args, label, 4, 32768, work)
        with srv:
            if fleet is None:
                fleet = Fleet(Tokenizer(srv), n_agents, n_turns, ctx_tokens, args.message_tokens)
                log(f"agent-fleet: context {fleet.context_tokens} tokens, user messages "
                    f"~{fleet.msg_tokens} tokens")
            log(f"agent-fleet: {label}: {n_agents} agents x {n_turns} turns, restart after turn "
                f"{restart_after}")
            if role == "reference":
                log("agent-fleet: the timed runs are done; the cache-off reference follows")
            only = None
            if role == "reference" and args.reference_turns:
                only = {t - 1 for t in args.reference_turns}
                log(f"agent-fleet: the reference checks turns "
                    f"{', '.join(map(str, args.reference_turns))} only (--reference-turns)")
            recs, walls = run_fleet_on(srv, fleet, restart_after, args.fleet_max_tokens,
                                       role == "cache", model_name, only)
        runs[label] = (srv.kind, recs, walls, srv)

    def turns(a, b):
        return f"turn {a}" if a == b else f"turns {a}-{b}"

    phases = [(1, turns(1, restart_after)), (2, turns(restart_after + 1, n_turns)),
              (3, f"first turn of each agent after the restart (turn {restart_after + 1})")]
    result = {"agents": n_agents, "turns": n_turns, "context_tokens": fleet.context_tokens,
              "message_tokens": fleet.msg_tokens, "restart_after_turn": restart_after,
              "max_tokens": args.fleet_max_tokens, "phases": {}, "servers": {}}
    rows = []
    for p, name in phases:
        result["phases"][name] = {}
        for label in ("kvstashd", "kvstashd --no-cache", "llama-server"):
            if label not in runs:
                rows.append([name, label] + ["-"] * 8)
                continue
            kind, recs, walls, _ = runs[label]
            sel = [r for r in recs if (r["first_after_restart"] if p == 3 else r["phase"] == p)]
            s = summarize_phase(sel, walls.get(p))
            result["phases"][name][label] = s
            if s is None:  # a --reference-turns subset without this phase
                rows.append([name, label] + ["-"] * 8)
                continue
            rows.append([name, label, s["requests"], fmt(s["prompt_tokens"]),
                         fmt(s["prefilled_tokens"]), fmt(s["cached_tokens"]),
                         fmt(s["ttft_p50_ms"]), fmt(s["ttft_p95_ms"]),
                         fmt(s["server_ttft_p50_ms"]), fmt(s["wall_s"], 2)])
    for label, (kind, recs, walls, srv) in runs.items():
        result["servers"][label] = {"ready_s": srv.ready_s, "stop_rc": srv.stop_rcs,
                                    "requests": [{k: v for k, v in r.items() if k != "t_end"}
                                                 for r in recs]}

    # goals
    def p50(label, name):
        s = result["phases"][name].get(label)
        return None if s is None else s["ttft_p50_ms"]

    kv1, ll1 = p50("kvstashd", phases[0][1]), p50("llama-server", phases[0][1])
    kv3, ll3 = p50("kvstashd", phases[2][1]), p50("llama-server", phases[2][1])
    kv2, ll2 = p50("kvstashd", phases[1][1]), p50("llama-server", phases[1][1])
    goal1 = None if ll1 is None else kv1 <= ll1
    goal2 = None if ll3 is None else kv3 <= ll3 / 10.0
    result["goals"] = {
        "before_restart_p50_le_llama": goal1,
        "after_restart_first_turn_p50_le_tenth_of_llama": goal2,
        "after_restart_turns_p50": {"kvstashd": kv2, "llama-server": ll2}}

    # greedy answers: cached kvstashd vs the cache-off reference
    ref_recs = runs["kvstashd --no-cache"][1] if "kvstashd --no-cache" in runs else []
    ref = {(r["agent"], r["turn"]): r["text"] for r in ref_recs}
    ref_gen = {(r["agent"], r["turn"]): r["generated"] for r in ref_recs}
    checked = [r for r in runs["kvstashd"][1] if (r["agent"], r["turn"]) in ref]
    mism = [r for r in checked if r["text"] != ref[r["agent"], r["turn"]]
            or r["generated"] != ref_gen[r["agent"], r["turn"]]]
    result["answers_checked"] = len(checked)
    # A model whose sampled tokens print nothing (e.g. a vocabulary of <unused_N> pieces) makes
    # the comparison of texts, and the client-side TTFT, meaningless: say so.
    no_text = all(not t for t in ref.values())
    result["answers_identical_to_no_cache"] = (None if (no_text and not mism) or not ref_recs
                                               else not mism)
    result["answer_mismatches"] = [{"agent": r["agent"] + 1, "turn": r["turn"] + 1,
                                    "kvstashd": r["text"],
                                    "no_cache": ref[r["agent"], r["turn"]]} for r in mism]
    ref_ptok = {(r["agent"], r["turn"]): r["prompt_tokens"] for r in ref_recs}
    ptok_same = {label: sum(1 for r in recs if (r["agent"], r["turn"]) in ref_ptok and
                            r["prompt_tokens"] == ref_ptok[r["agent"], r["turn"]])
                 for label, (_, recs, _, _) in runs.items()}
    result["prompt_tokens_identical_to_no_cache"] = ptok_same
    peer_same = None
    if "llama-server" in runs:
        peer_same = sum(1 for r in runs["llama-server"][1]
                        if r["text"] == ref.get((r["agent"], r["turn"])))
        result["llama_answers_identical_to_no_cache"] = peer_same

    lines = [f"### agent-fleet: {n_agents} agents x {n_turns} turns, shared context "
             f"{fleet.context_tokens} tokens, user messages ~{fleet.msg_tokens} tokens, "
             f"max_tokens {args.fleet_max_tokens}, restart after turn {restart_after}",
             "",
             table(["phase", "server", "requests", "prompt tok", "prefilled tok", "cached tok",
                    "TTFT p50 ms", "TTFT p95 ms", "server TTFT p50 ms", "wall s"], rows),
             "",
             "TTFT: client-side, send -> first SSE chunk with non-empty text. server TTFT: "
             "kvstash usage.kvstash.ttft_ms, llama timings.prompt_ms. prefilled: kvstash "
             "usage.kvstash.prefilled_tokens, llama timings.prompt_n; cached: kvstash "
             "usage.kvstash.cached_tokens, llama timings.cache_n.",
             "",
             f"- goal: before the restart kvstashd p50 TTFT <= llama-server's: "
             f"{fmt(kv1)} vs {fmt(ll1)} ms -> {met(goal1)}",
             f"- goal: after the restart (first turn of each agent) kvstashd p50 TTFT <= 1/10 of "
             f"llama-server's: {fmt(kv3)} vs {fmt(None if ll3 is None else ll3 / 10)} ms "
             f"-> {met(goal2)}",
             f"- greedy answers: kvstashd identical to kvstashd --no-cache: "
             f"{len(ref) - len(mism)}/{len(ref)}"
             + (f" (the {len(ref)} requests of turns "
                f"{', '.join(map(str, args.reference_turns))}; --reference-turns)"
                if args.reference_turns else "") + " -> "
             + ("NOT CHECKED (--reference-turns none)" if not ref_recs else "MISMATCH"
                if mism else "INCONCLUSIVE: no answer has any visible text "
                "(only token counts compared)" if no_text else "OK")]
    for m in result["answer_mismatches"][:5]:
        lines.append(f"  - agent {m['agent']} turn {m['turn']}: kvstashd {m['kvstashd']!r} vs "
                     f"--no-cache {m['no_cache']!r}")
    lines.append("- prompt token counts equal to kvstashd --no-cache's, per request: " +
                 ", ".join(f"{label} {n}/{len(ref)}" for label, n in ptok_same.items()
                           if label != "kvstashd --no-cache"))
    if peer_same is not None:
        lines.append(f"- (info) llama-server answers identical to kvstashd --no-cache: "
                     f"{peer_same}/{len(ref)} (different kernels; not a goal)")
    if any(r["no_text"] for _, recs, _, _ in runs.values() for r in recs):
        lines.append("- WARNING: some replies carry no text at all (the model's sampled tokens "
                     "print nothing); their client TTFT is the first SSE data chunk of any kind: "
                     "llama-server sends one per token (empty text), kvstashd none before the "
                     "final one, so client TTFTs are not comparable. Use a model whose vocabulary "
                     "prints text (current kvstash-mkmodel writes one).")
    for label, (kind, recs, walls, srv) in runs.items():
        nt = sum(1 for r in recs if r["no_text"])
        lines.append(f"- {label}: ready after start/restart in "
                     f"{', '.join(f'{x:.2f}' for x in srv.ready_s)} s; exit status on stop: "
                     f"{', '.join(str(x) for x in srv.stop_rcs)}"
                     + (f"; {nt} replies without any text (TTFT = first chunk)" if nt else ""))
    out["agent-fleet"] = result
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Question 2: overhead

def q_overhead(args, work, out):
    cache_dir = os.path.join(work, "overhead-cache")
    shutil.rmtree(cache_dir, ignore_errors=True)
    srv = kvstashd_server(args, "kvstashd-overhead", ["--parallel", "8", "-c", "8192",
                                                      "--cache-dir", cache_dir], work)
    reps = args.reps
    with srv:
        text, ntok = text_of_tokens(Tokenizer(srv), 4321, args.overhead_tokens, repo_text)
        body = {"model": os.path.basename(args.model), "prompt": text, "max_tokens": 1,
                "temperature": 0}
        log(f"overhead: warming a {ntok}-token prompt")
        st, b, wall = http_json(srv.host, srv.port, "POST", "/v1/completions", body)
        if st != 200:
            raise BenchError(f"overhead warm-up: HTTP {st}: {str(b)[:500]}")
        cold_ms = wall * 1e3
        samples = []
        for i in range(reps):
            st, b, wall = http_json(srv.host, srv.port, "POST", "/v1/completions", body)
            if st != 200:
                raise BenchError(f"overhead rep {i}: HTTP {st}: {str(b)[:500]}")
            k = b["usage"]["kvstash"]
            samples.append({"wall_ms": wall * 1e3, "ttft_ms": k["ttft_ms"],
                            "total_ms": k.get("total_ms"), "queue_ms": k.get("queue_ms"),
                            "cached": k["cached_tokens"], "prefilled": k["prefilled_tokens"],
                            "prompt_tokens": b["usage"]["prompt_tokens"]})
            log(f"overhead rep {i + 1}/{reps}: wall {wall * 1e3:.2f} ms, ttft_ms "
                f"{k['ttft_ms']:.2f}, cached {k['cached_tokens']}, prefilled "
                f"{k['prefilled_tokens']}")
    diffs = [s["wall_ms"] - s["ttft_ms"] for s in samples]
    res = {"prompt_tokens": samples[0]["prompt_tokens"], "reps": reps, "cold_wall_ms": cold_ms,
           "cached_tokens_median": statistics.median(s["cached"] for s in samples),
           "prefilled_tokens_median": statistics.median(s["prefilled"] for s in samples),
           "wall_ms_median": statistics.median(s["wall_ms"] for s in samples),
           "ttft_ms_median": statistics.median(s["ttft_ms"] for s in samples),
           "total_ms_median": statistics.median(s["total_ms"] for s in samples
                                                if s["total_ms"] is not None),
           "overhead_ms_median": statistics.median(diffs), "overhead_ms_min": min(diffs),
           "samples": samples, "stop_rc": srv.stop_rcs}
    res["goal_met"] = res["overhead_ms_median"] <= 2.0
    out["overhead"] = res
    rows = [["kvstashd", res["prompt_tokens"], fmt(res["cached_tokens_median"], 0),
             fmt(res["prefilled_tokens_median"], 0), fmt(res["cold_wall_ms"], 1),
             fmt(res["wall_ms_median"], 2), fmt(res["ttft_ms_median"], 2),
             fmt(res["total_ms_median"], 2), fmt(res["overhead_ms_median"], 2),
             fmt(res["overhead_ms_min"], 2)]]
    return "\n".join([
        f"### overhead: a fully cached {res['prompt_tokens']}-token prompt, non-streamed "
        f"/v1/completions, max_tokens 1, median of {reps}",
        "",
        table(["server", "prompt tok", "cached tok", "prefilled tok", "first (cold) wall ms",
               "client wall ms", "usage.kvstash.ttft_ms", "usage.kvstash.total_ms",
               "HTTP+JSON+sched ms (wall - ttft)", "min of wall - ttft"], rows),
        "",
        f"- goal: HTTP + JSON + scheduling (client wall - server ttft_ms, median) <= 2 ms: "
        f"{fmt(res['overhead_ms_median'], 2)} ms -> {met(res['goal_met'])}",
        f"- kvstashd exit status on stop: {', '.join(str(x) for x in srv.stop_rcs)}"])


# ----------------------------------------------------------------------------------------------
# Question 3: concurrency

def run_clients(server, prompts, max_tokens, model_name):
    n = len(prompts)
    results = [None] * n
    errors = []
    barrier = threading.Barrier(n + 1)

    def client(i):
        try:
            barrier.wait()
            results[i] = stream_completion(server.host, server.port,
                                           {"model": model_name, "prompt": prompts[i],
                                            "max_tokens": max_tokens, "temperature": 0})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {i}: {e}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise BenchError(f"{server.label}: " + "; ".join(errors[:4]))
    gens = [reply_numbers(server.kind, r)[4] for r in results]
    gen = sum(g or 0 for g in gens)
    return {"clients": n, "wall_s": wall, "generated_tokens": gen,
            "tokens_per_s": gen / wall if wall > 0 else None,
            "ttft_p50_ms": pct([r["ttft_s"] * 1e3 for r in results], 50),
            "prefilled_tokens": sum(reply_numbers(server.kind, r)[1] or 0 for r in results),
            "server_decode_ms": [((r.get("usage") or {}).get("kvstash") or {}).get("decode_ms")
                                 if server.kind == "kvstashd"
                                 else (r.get("timings") or {}).get("predicted_ms")
                                 for r in results],
            "no_text_replies": sum(1 for r in results if r["no_text"]),
            "texts": [r["text"] for r in results]}


def q_concurrency(args, work, out):
    model_name = os.path.basename(args.model)
    res = {"prompt_tokens": args.conc_prompt_tokens, "max_tokens": args.conc_max_tokens,
           "rows": []}
    tok_srv = None
    rows = []
    for n in args.clients:
        cache_dir = os.path.join(work, f"conc-cache-{n}")
        shutil.rmtree(cache_dir, ignore_errors=True)
        kv = kvstashd_server(args, f"kvstashd-conc-{n}",
                             ["--parallel", "16", "-c", "8192", "--cache-dir", cache_dir], work)
        with kv:
            tok_srv = Tokenizer(kv)
            # distinct prompts: per N and per client, so neither server finds them cached
            maker = lambda r, k: " ".join(words(r, k))  # noqa: E731
            base_text, _ = text_of_tokens(tok_srv, 777, args.conc_prompt_tokens, maker)
            n_words = len(base_text.split())
            prompts = [f"Client {i + 1} of {n}: " +
                       " ".join(words(random.Random(n * 1000 + i), n_words)) for i in range(n)]
            log(f"concurrency: kvstashd, {n} clients")
            kr = run_clients(kv, prompts, args.conc_max_tokens, model_name)
        kr["stop_rc"] = kv.stop_rcs
        lr = None
        if args.llama_server:
            ll = llama_server(args, f"llama-server-np{n}", n, n * 1024, work)
            with ll:
                log(f"concurrency: llama-server -np {n}, {n} clients")
                lr = run_clients(ll, prompts, args.conc_max_tokens, model_name)
            lr["stop_rc"] = ll.stop_rcs
        ratio = None
        if lr and lr["tokens_per_s"]:
            ratio = kr["tokens_per_s"] / lr["tokens_per_s"]
        res["rows"].append({"clients": n, "kvstashd": kr, "llama-server": lr, "ratio": ratio,
                            "goal_met": None if ratio is None else ratio >= 1.0})
        rows.append([n, fmt(kr["tokens_per_s"]), fmt(lr and lr["tokens_per_s"]), fmt(ratio, 2),
                     met(None if ratio is None else ratio >= 1.0), kr["generated_tokens"],
                     "-" if lr is None else lr["generated_tokens"], fmt(kr["ttft_p50_ms"]),
                     fmt(lr and lr["ttft_p50_ms"]), fmt(kr["wall_s"], 2),
                     fmt(lr and lr["wall_s"], 2)])
    out["concurrency"] = res
    nt = sum((r["kvstashd"]["no_text_replies"] + (r["llama-server"] or {}).get("no_text_replies", 0))
             for r in res["rows"])
    warn = [f"- WARNING: {nt} replies carry no text at all; their TTFT is the first SSE data "
            "chunk of any kind (not comparable between the servers)."] if nt else []
    return "\n".join([
        f"### concurrency: N streaming clients, distinct ~{args.conc_prompt_tokens}-token "
        f"prompts, max_tokens {args.conc_max_tokens}, temperature 0; kvstashd --parallel 16, "
        f"llama-server -np N -c N*1024",
        "",
        table(["clients", "kvstashd tok/s", "llama-server tok/s", "ratio", "goal ratio >= 1.0",
               "kvstash gen tok", "llama gen tok", "kvstash TTFT p50 ms", "llama TTFT p50 ms",
               "kvstash wall s", "llama wall s"], rows),
        "",
        "tok/s: generated tokens of all clients / wall time from the common start to the last "
        "reply (prefill included)."] + warn)


# ----------------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--kvstashd", default=DEFAULT_KVSTASHD)
    ap.add_argument("--llama-server", default=None,
                    help="llama.cpp's llama-server; without it the peer columns are '-'")
    ap.add_argument("--work", default=None, help="directory for caches and logs (default: temp)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temp --work directory")
    ap.add_argument("--questions", default=",".join(ALL_QUESTIONS))
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                    help="JSON results: alone, on stdout (tables then go to stderr); or to FILE")
    ap.add_argument("--quick", action="store_true",
                    help="smoke sizes: 2 agents x 4 turns, 512-token context, restart after "
                         "turn 2, 3 reps, clients 1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ready-timeout", type=float, default=300.0,
                    help="seconds a server has to answer /health 200")
    g = ap.add_argument_group("sizes (defaults: full run, or --quick)")
    g.add_argument("--agents", type=int)
    g.add_argument("--turns", type=int)
    g.add_argument("--context-tokens", type=int)
    g.add_argument("--message-tokens", type=int)
    g.add_argument("--restart-after", type=int)
    g.add_argument("--fleet-max-tokens", type=int, default=16)
    g.add_argument("--reference-turns", default="",
                   help="agent-fleet: turns (1-based, comma-separated) the cache-off reference "
                        "checks; default all (the reference recomputes every prompt cold, which "
                        "takes longer than both timed runs together); 'none' skips it (timing "
                        "runs only: no answer check)")
    g.add_argument("--reps", type=int)
    g.add_argument("--overhead-tokens", type=int)
    g.add_argument("--clients", type=str)
    g.add_argument("--conc-prompt-tokens", type=int, default=200)
    g.add_argument("--conc-max-tokens", type=int, default=64)
    a = ap.parse_args(argv)
    full = dict(agents=8, turns=10, context_tokens=4096, message_tokens=100, restart_after=5,
                reps=20, overhead_tokens=2000, clients="1,4,16")
    quick = dict(agents=2, turns=4, context_tokens=512, message_tokens=100, restart_after=2,
                 reps=3, overhead_tokens=512, clients="1,2")
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.clients = [int(x) for x in str(a.clients).split(",") if x.strip()]
    a.no_reference = a.reference_turns.strip() == "none"
    try:
        a.reference_turns = [] if a.no_reference else sorted(
            {int(t) for t in a.reference_turns.split(",") if t.strip()})
    except ValueError:
        ap.error(f"--reference-turns {a.reference_turns!r}: expected turn numbers like 1,6,10")
    if any(t < 1 or t > a.turns for t in a.reference_turns):
        ap.error(f"--reference-turns: turns must be between 1 and --turns ({a.turns})")
    a.questions = [q.strip() for q in a.questions.split(",") if q.strip()]
    for q in a.questions:
        if q not in ALL_QUESTIONS:
            ap.error(f"unknown question {q!r} (have: {', '.join(ALL_QUESTIONS)})")
    for path, what in ((a.model, "--model"), (a.kvstashd, "--kvstashd")):
        if not os.path.exists(path):
            ap.error(f"{what} {path}: no such file")
    if a.llama_server and not os.access(a.llama_server, os.X_OK):
        ap.error(f"--llama-server {a.llama_server}: not an executable")
    return a


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    tmp = None
    if args.work:
        work = os.path.abspath(args.work)
        os.makedirs(work, exist_ok=True)
    else:
        tmp = work = tempfile.mkdtemp(prefix="daemon_bench.")
    table_out = sys.stderr if args.json == "-" else sys.stdout
    out = {"config": {"model": args.model, "kvstashd": args.kvstashd,
                      "llama_server": args.llama_server, "threads": args.threads,
                      "quick": args.quick, "questions": args.questions, "work": work}}
    log(f"work dir {work}; model {args.model}")
    t0 = time.monotonic()
    failed = False
    try:
        for q in args.questions:
            fn = {"agent-fleet": q_agent_fleet, "overhead": q_overhead,
                  "concurrency": q_concurrency}[q]
            tq = time.monotonic()
            try:
                text = fn(args, work, out)
            except BenchError as e:
                failed = True
                log(f"{q} FAILED: {e}")
                out[q] = {"error": str(e)}
                text = f"### {q}: FAILED\n\n{e}"
            print(text + "\n", file=table_out, flush=True)
            log(f"{q} took {time.monotonic() - tq:.1f} s")
    finally:
        _kill_all()
        out["config"]["elapsed_s"] = time.monotonic() - t0
        if args.json:
            doc = json.dumps(out, indent=1, default=str)
            if args.json == "-":
                print(doc, flush=True)
            else:
                with open(args.json, "w") as f:
                    f.write(doc + "\n")
        if tmp and not args.keep_work and not failed:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp:
            log(f"logs kept in {tmp}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
