#!/usr/bin/python3
"""Crash-safety soak of kvstashd's persistent KV cache: kill it at random moments, restart it on
the same --cache-dir, and check that every answer is still exactly right.

Standard library only. Run it from anywhere:

  /usr/bin/python3 scripts/soak_kill_restart.py                # 1000 cycles
  /usr/bin/python3 scripts/soak_kill_restart.py --cycles 20 --sigterm-every 10

1. References: a kvstashd with --no-cache answers the fixed prompts below (8 stories of 150-400
   tokens, sharing a prefix of ~150 tokens in pairs; max_tokens 24, temperature 0) one at a time, then all
   at once; both passes must agree (otherwise the references themselves are not deterministic
   and the soak stops, exit 2).
2. N cycles on ONE persistent cache directory with a small --cache-bytes (1536K, a bit less
   than the prompts' blocks, so whole segments are evicted and blocks rewritten all along): start kvstashd, wait for /health, check one answer at once (recovery
   must give the right output), start --clients threads that loop over the prompts and compare
   every 200 answer with its reference, SIGKILL the daemon after a random 0..--max-kill-ms delay
   (seeded by --seed), join the clients. Every --sigterm-every-th cycle sends SIGTERM instead and
   requires exit status 0.

Failures (each recorded with cycle, prompt, the daemon log path, and stops the run at the first
one unless --keep-going):
  wrong answer     a 200 whose text differs from the reference (got vs expected is printed)
  failed start     the daemon exits or is not healthy within --start-timeout (log tail printed)
  error            a non-200 answer, or a connection failure, before the daemon was signalled;
                   the daemon dying by itself; the recovery check not answering 200
  bad exit         SIGTERM did not give exit status 0 (or no exit within --stop-timeout)

Requests cut by the kill itself (connection reset, incomplete body) are expected and counted
only. Every daemon's stdout+stderr goes to WORK/logs/cycle-NNNNNN.log; logs of clean cycles are
removed except the last few; failing cycles keep theirs, and so does the first log showing each
kind of daemon warning/error line (the summary counts them by kind and names that log). Before each start the cache directory
is copied to WORK/prestart-cache (the state the daemon recovers from); on a failure that copy is
kept as WORK/failure-cycle-NNNNNN-prestart-cache, so the failing start can be replayed.

Output: progress every --progress cycles on stderr; at the end a summary table on stdout (with
--json the same summary as one JSON object on stdout, the table on stderr), and exit status 0
(no failure), 1 (failures) or 2 (could not run).
"""
import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_TOKENS = 24
REQUEST_TIMEOUT_S = 120  # one 400-token prompt takes well under a second even on a busy machine
LISTEN_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
LOG_LEVEL_RE = re.compile(r"^\[[^]]*\] \[(warning|error|critical)\] (.*)$")
# /metrics counters scraped just before each signal (per process, so their sums are lower bounds)
METRICS = {
    'kvstash_cache_evictions_total{tier="disk"}': "disk_blocks_evicted",
    'kvstash_cache_hits_total{tier="disk"}': "disk_block_hits",
    "kvstash_store_blocks_written_total": "store_blocks_written",
    "kvstash_write_behind_dropped_total": "write_behind_dropped",
    "kvstash_write_behind_failed_total": "write_behind_failed",
    "kvstash_cache_corrupt_blocks_total": "corrupt_blocks",
}

# Four shared prefixes (TinyStories style: the fixture model was trained on such text), each
# continued two ways: the pairs share their first blocks, so one prompt's blocks serve the other.
_PREFIX_LILY = (
    "Once upon a time, there was a little girl named Lily. She lived in a small house with her "
    "mom and a big brown dog named Max. Every morning Lily and Max went to the park to play. "
    "One day, Lily saw a shiny red ball under a bench. She picked it up and showed it to Max. "
    "Max wagged his tail and barked. ")
_PREFIX_TIM = (
    "Tim was a little boy who loved to build things. He had a big box of blocks in his room. "
    "One sunny day, Tim wanted to build a tall tower. He put one block on top of another, very "
    "slowly. His sister Sue came into the room and watched him. \"What are you making?\" she "
    "asked. ")
_PREFIX_BEN = (
    "Ben and his friend Anna went to the beach. The sun was warm and the water was blue. They "
    "made a big sand castle near the water. Ben made the walls and Anna made the towers. They "
    "put little shells on the top. \"Our castle is the best castle in the world,\" Anna said. ")
_PREFIX_MIA = (
    "Mia had a small garden behind her house. In the garden there were red flowers and a little "
    "tree with green apples. Every day Mia gave water to the flowers. One morning Mia found a "
    "little bird on the ground under the tree. The bird could not fly. ")

PROMPTS = [
    ("lily-share", _PREFIX_LILY +
     "A boy named Sam came to the park. He was sad because he had no toys. Lily walked to Sam "
     "and said, \""),
    ("lily-lost", _PREFIX_LILY +
     "But then Max ran away with the ball. He ran past the trees and the pond, and Lily could not "
     "see him anymore. Lily was scared. The park was big and the trees were tall, and the sun "
     "was going down. Lily did not want to go home without her friend. She called his name and looked everywhere. At last she "
     "heard a bark behind a big bush. Max was there, lying in the shade with the ball between his "
     "paws. Lily hugged him and said, \"Max, you"),
    ("tim-tower", _PREFIX_TIM +
     "\"A tower for the birds,\" Tim said. Then their cat Tom jumped on the"),
    ("tim-help", _PREFIX_TIM +
     "\"A big tower,\" Tim said. Sue wanted to help, so she gave him a yellow block and a blue "
     "block. The tower got taller and taller. Their mom came to see it and said it was the best "
     "tower she had ever seen. Tim and Sue put a little toy bird on the top, and they clapped "
     "their hands and laughed. That night Tim dreamed of a tower so tall that it touched the moon. "
     "In the morning he told Sue about his dream, and Sue"),
    ("ben-crab", _PREFIX_BEN +
     "Then they saw a little red crab. It walked to the castle and went inside. Ben"),
    ("ben-storm", _PREFIX_BEN +
     "Then the sky became dark and the wind began to blow. Ben's dad called, \"Come here, kids! "
     "It is going to rain!\" Ben and Anna took their buckets and ran to their families. They sat "
     "under a big umbrella and ate sandwiches while the rain fell. Anna was worried about the "
     "castle. \"The rain will break our towers,\" she said. Ben held her hand and told her not to "
     "be sad. When the rain stopped, they ran "
     "back to the castle, and they saw that"),
    ("mia-bird", _PREFIX_MIA +
     "Mia was sad for the bird. She picked it up very gently and took it to her mom. Her mom "
     "said, \""),
    ("mia-fly", _PREFIX_MIA +
     "Mia and her mom took care of the bird for many days. Mia named it Pip. She sang songs to Pip "
     "and showed him her flowers. One day Pip moved his wings and flew up to the apple tree. Mia "
     "clapped her hands and said, \"Pip, you can fly again!\" Pip sang a happy song. Mia was a "
     "little sad that Pip would go away, but she was also very glad, because Pip was strong "
     "and free. From then "
     "on, every morning"),
]


class SetupError(Exception):
    """The soak could not run (missing binary, nondeterministic references...): exit 2."""


def log_progress(message):
    print(f"soak: {message}", file=sys.stderr, flush=True)


def tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text.splitlines()[-lines:])


def http_request(port, method, path, body=None, timeout=REQUEST_TIMEOUT_S):
    """Returns (status, raw bytes). Connection failures raise OSError or http.client.HTTPException."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def completion_body(prompt):
    return {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}


def parse_completion(raw):
    """(text, usage dict, response id) of a completion body, or None when it is not one."""
    try:
        obj = json.loads(raw.decode("utf-8"))
        return obj["choices"][0]["text"], obj.get("usage") or {}, obj.get("id")
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        return None


class Daemon:
    """One kvstashd process, stdout+stderr to log_path."""

    live = set()  # every started, not yet reaped daemon: killed on exit whatever happens

    def __init__(self, argv, log_path):
        self.log_path = log_path
        self.port = None
        self.signalled = None  # signal number once we signalled it
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        Daemon.live.add(self)

    def wait_ready(self, timeout):
        """Waits for the port line and a 200 /health. Returns None, or why it did not come up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                return f"exited with status {rc} before it was healthy"
            if self.port is None:
                try:
                    with open(self.log_path, "r", errors="replace") as f:
                        m = LISTEN_RE.search(f.read(64 * 1024))
                    if m:
                        self.port = int(m.group(1))
                except OSError:
                    pass
            if self.port is not None:
                try:
                    status, _ = http_request(self.port, "GET", "/health", timeout=5)
                    if status == 200:
                        return None
                except (OSError, http.client.HTTPException):
                    pass
            time.sleep(0.005)
        return f"not healthy within {timeout} s (port {self.port})"

    def send(self, sig):
        self.signalled = sig
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout):
        """Exit status, or None if it is still running after timeout."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._close()
        return rc

    def kill_and_reap(self):
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._close()

    def _close(self):
        Daemon.live.discard(self)
        if not self._log.closed:
            self._log.close()


def daemon_argv(args, cache_dir, extra):
    return [args.bin, "-m", args.model, "--port", "0", "-t", str(args.threads),
            "--cache-dir", cache_dir, "--log-level", args.log_level, "--socket", "none"] + extra


def compute_references(args, work):
    """Reference text per prompt from a cache-off daemon: sequential, then all concurrently."""
    log_path = os.path.join(work, "logs", "reference.log")
    d = Daemon(daemon_argv(args, os.path.join(work, "reference-cache-unused"), ["--no-cache"]),
               log_path)
    try:
        why = d.wait_ready(args.start_timeout)
        if why:
            raise SetupError(f"the reference (--no-cache) daemon {why}\n{tail(log_path)}")
        refs, tokens = {}, {}
        for name, prompt in PROMPTS:
            try:
                status, raw = http_request(d.port, "POST", "/v1/completions",
                                           completion_body(prompt))
            except (OSError, http.client.HTTPException) as e:
                raise SetupError(f"reference {name}: {type(e).__name__}: {e}\n{tail(log_path)}")
            parsed = parse_completion(raw) if status == 200 else None
            if parsed is None:
                raise SetupError(f"reference {name}: HTTP {status}: {raw[:500]!r}")
            refs[name] = parsed[0]
            tokens[name] = parsed[1].get("prompt_tokens")
        again = {}

        def one(name, prompt):
            try:
                status, raw = http_request(d.port, "POST", "/v1/completions",
                                           completion_body(prompt))
            except (OSError, http.client.HTTPException) as e:
                again[name] = f"{type(e).__name__}: {e}"
                return
            parsed = parse_completion(raw) if status == 200 else None
            again[name] = parsed[0] if parsed else f"HTTP {status}: {raw[:200]!r}"

        threads = [threading.Thread(target=one, args=p) for p in PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, _ in PROMPTS:
            if again.get(name) != refs[name]:
                raise SetupError(
                    f"references are not deterministic (--no-cache): {name}: sequential "
                    f"{refs[name]!r}, concurrent {again.get(name)!r}")
        d.send(signal.SIGTERM)
        d.wait(args.stop_timeout)
        return refs, tokens
    finally:
        d.kill_and_reap()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.cycles = 0
        self.sigkills = 0
        self.sigterms = 0
        self.checked = 0
        self.wrong = 0
        self.failed_starts = 0
        self.errors = 0
        self.bad_exits = 0
        self.disk_answers = 0
        self.recovery_from_disk = 0
        self.cut_by_kill = 0
        self.disk_tokens = 0
        self.cached_tokens = 0
        self.prompt_tokens = 0
        self.metrics = {k: 0 for k in METRICS.values()}  # summed over scrapes before signals
        self.metric_scrapes = 0
        self.log_lines = {}  # warning/error line pattern -> [count, first example, first log]
        self.segments_seen = set()
        self.segments_gone = set()
        self.failures = []  # dicts, in order


class Cycle:
    """State shared by one cycle's client threads."""

    def __init__(self, index, daemon, stats, refs, args):
        self.index = index
        self.daemon = daemon
        self.stats = stats
        self.refs = refs
        self.args = args
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def check(self, name, prompt, who):
        """One request; classifies and counts it. Returns False on a failure."""
        stats, d = self.stats, self.daemon
        try:
            status, raw = http_request(d.port, "POST", "/v1/completions", completion_body(prompt))
        except (OSError, http.client.HTTPException) as e:
            if d.signalled is not None:
                with stats.lock:
                    stats.cut_by_kill += 1
                return True
            return self.fail("error", name, who, detail=f"{type(e).__name__}: {e} before the "
                             "daemon was signalled")
        parsed = parse_completion(raw) if status == 200 else None
        if parsed is None:
            if d.signalled == signal.SIGKILL and status == 200:
                with stats.lock:  # a body cut short by the kill
                    stats.cut_by_kill += 1
                return True
            if d.signalled == signal.SIGTERM:
                with stats.lock:  # refused while shutting down
                    stats.cut_by_kill += 1
                return True
            return self.fail("error", name, who,
                             detail=f"HTTP {status}: {raw[:1000].decode('utf-8', 'replace')}")
        text, usage, response_id = parsed
        kv = usage.get("kvstash") or {}
        with stats.lock:
            stats.checked += 1
            stats.prompt_tokens += usage.get("prompt_tokens") or 0
            stats.cached_tokens += kv.get("cached_tokens") or 0
            stats.disk_tokens += kv.get("disk_tokens") or 0
            if (kv.get("disk_tokens") or 0) > 0:
                stats.disk_answers += 1
                if who == "recovery":
                    stats.recovery_from_disk += 1
        if text != self.refs[name]:
            expected = self.refs[name]
            at = next((i for i, (a, b) in enumerate(zip(text, expected)) if a != b),
                      min(len(text), len(expected)))
            return self.fail("wrong answer", name, who, got=text, expected=expected,
                             first_difference_at_char=at, response_id=response_id, usage=usage)
        return True

    def fail(self, kind, name, who, **extra):
        rec = {"kind": kind, "cycle": self.index, "prompt": name, "client": who,
               "ms_after_ready": round((time.monotonic() - self.t0) * 1000, 1),
               "signalled": signal.Signals(self.daemon.signalled).name
               if self.daemon.signalled else None,
               "log": self.daemon.log_path}
        rec.update(extra)
        with self.stats.lock:
            if kind == "wrong answer":
                self.stats.wrong += 1
            else:
                self.stats.errors += 1
            self.stats.failures.append(rec)
        report_failure(rec)
        if not self.args.keep_going:
            self.stop.set()
        return False

    def client(self, k):
        rng = random.Random(f"{self.args.seed}/{self.index}/{k}")
        order = list(range(len(PROMPTS)))
        while not self.stop.is_set():
            rng.shuffle(order)
            for i in order:
                if self.stop.is_set():
                    return
                name, prompt = PROMPTS[i]
                self.check(name, prompt, f"client-{k}")


def report_failure(rec):
    lines = [f"FAILURE: {rec['kind']} in cycle {rec['cycle']}"]
    for key, value in rec.items():
        if key in ("kind", "cycle", "log_tail"):
            continue
        lines.append(f"  {key}: {value!r}" if isinstance(value, str) else
                     f"  {key}: {json.dumps(value)}")
    if rec.get("log_tail"):
        lines.append("  log tail:")
        lines.extend("    " + line for line in rec["log_tail"].splitlines())
    print("\n".join(lines), file=sys.stderr, flush=True)


def scrape_metrics(port, stats):
    """Adds this process's counters (see METRICS) to stats; a failed scrape is just skipped."""
    try:
        status, raw = http_request(port, "GET", "/metrics", timeout=5)
    except (OSError, http.client.HTTPException):
        return
    if status != 200:
        return
    got = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, _, value = line.rpartition(" ")
        if key in METRICS:
            try:
                got[METRICS[key]] = float(value)
            except ValueError:
                pass
    with stats.lock:
        stats.metric_scrapes += 1
        for k, v in got.items():
            stats.metrics[k] += int(v)


def scan_log(path, stats):
    """Counts the daemon's warning/error lines by pattern (numbers replaced by N). True when the
    log has a pattern not seen before (the log is then kept: the summary names it)."""
    try:
        with open(path, "r", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return False
    new = False
    for line in lines:
        m = LOG_LEVEL_RE.match(line.rstrip("\n"))
        if not m:
            continue
        pattern = f"[{m.group(1)}] " + re.sub(r"\d+", "N", m.group(2))
        if pattern not in stats.log_lines:
            stats.log_lines[pattern] = [0, line.rstrip("\n"), path]
            new = True
        stats.log_lines[pattern][0] += 1
    return new


def list_segments(cache_dir):
    try:
        return {n for n in os.listdir(os.path.join(cache_dir, "segments")) if n.endswith(".seg")}
    except OSError:
        return set()


def snapshot(cache_dir, dest):
    if os.path.exists(dest):
        shutil.rmtree(dest)
    if os.path.isdir(cache_dir):
        shutil.copytree(cache_dir, dest, symlinks=True)


def run_cycles(args, work, cache_dir, refs, stats):
    rng = random.Random(args.seed)
    logs = os.path.join(work, "logs")
    prestart = os.path.join(work, "prestart-cache")
    recent_clean_logs = []
    start_wall = time.monotonic()
    extra = ["--cache-bytes", args.cache_bytes]
    for index in range(1, args.cycles + 1):
        if args.snapshot:
            snapshot(cache_dir, prestart)
        stats.segments_seen |= list_segments(cache_dir)
        log_path = os.path.join(logs, f"cycle-{index:06d}.log")
        failures_before = len(stats.failures)
        use_sigterm = args.sigterm_every > 0 and index % args.sigterm_every == 0
        delay = rng.uniform(0, args.max_kill_ms / 1000.0)
        d = Daemon(daemon_argv(args, cache_dir, extra), log_path)
        cyc = Cycle(index, d, stats, refs, args)
        try:
            why = d.wait_ready(args.start_timeout)
            if why:
                rec = {"kind": "failed start", "cycle": index, "why": why, "log": log_path,
                       "log_tail": tail(log_path)}
                with stats.lock:
                    stats.failed_starts += 1
                    stats.failures.append(rec)
                report_failure(rec)
            else:
                cyc.t0 = time.monotonic()
                name, prompt = PROMPTS[(index - 1) % len(PROMPTS)]
                cyc.check(name, prompt, "recovery")
                threads = [threading.Thread(target=cyc.client, args=(k,), daemon=True)
                           for k in range(args.clients)]
                for t in threads:
                    t.start()
                cyc.stop.wait(delay)
                scrape_metrics(d.port, stats)
                if d.proc.poll() is not None:
                    cyc.fail("error", None, "daemon", detail="the daemon exited by itself with "
                             f"status {d.proc.returncode} before it was signalled",
                             log_tail=tail(log_path))
                if use_sigterm:
                    d.send(signal.SIGTERM)
                    cyc.stop.set()
                    rc = d.wait(args.stop_timeout)
                    with stats.lock:
                        stats.sigterms += 1
                    if rc != 0:
                        rec = {"kind": "bad exit", "cycle": index, "log": log_path,
                               "detail": "SIGTERM gave " + (f"exit status {rc}" if rc is not None
                                                           else f"no exit in {args.stop_timeout} s")}
                        with stats.lock:
                            stats.bad_exits += 1
                            stats.failures.append(rec)
                        rec["log_tail"] = tail(log_path)
                        report_failure(rec)
                else:
                    d.send(signal.SIGKILL)
                    cyc.stop.set()
                    d.wait(30)
                    with stats.lock:
                        stats.sigkills += 1
                for t in threads:
                    t.join(REQUEST_TIMEOUT_S + 10)
        finally:
            d.kill_and_reap()
        stats.cycles = index
        first_of_a_kind = scan_log(log_path, stats)
        now_segments = list_segments(cache_dir)
        stats.segments_gone |= (stats.segments_seen - now_segments)
        stats.segments_seen |= now_segments
        failed = len(stats.failures) > failures_before
        if failed:
            if args.snapshot and os.path.isdir(prestart):
                kept = os.path.join(work, f"failure-cycle-{index:06d}-prestart-cache")
                os.rename(prestart, kept)
                log_progress(f"cycle {index}: the cache directory it started from is kept at "
                             f"{kept}; its log is {log_path}")
        elif not first_of_a_kind:
            recent_clean_logs.append(log_path)
            while len(recent_clean_logs) > args.keep_logs:
                try:
                    os.remove(recent_clean_logs.pop(0))
                except OSError:
                    pass
        if index % args.progress == 0 or index == args.cycles:
            el = time.monotonic() - start_wall
            log_progress(f"cycle {index}/{args.cycles}  {el:.0f} s  checked {stats.checked}  "
                         f"wrong {stats.wrong}  failed starts {stats.failed_starts}  errors "
                         f"{stats.errors}  from disk {stats.disk_answers}  segment files removed "
                         f"{len(stats.segments_gone)}  disk blocks evicted "
                         f"{stats.metrics['disk_blocks_evicted']}")
        if failed and not args.keep_going:
            log_progress(f"stopping at the first failure (cycle {index}); --keep-going runs on")
            break


def summary(args, stats, refs_tokens, seconds, work, cache_dir, interrupted):
    return {
        "interrupted": interrupted,
        "cycles": stats.cycles,
        "kills": stats.sigkills,
        "sigterm_stops": stats.sigterms,
        "answers_checked": stats.checked,
        "wrong_answers": stats.wrong,
        "failed_starts": stats.failed_starts,
        "errors": stats.errors,
        "bad_exits": stats.bad_exits,
        "answers_with_disk_tokens": stats.disk_answers,
        "recovery_checks_from_disk": stats.recovery_from_disk,
        "requests_cut_by_signal": stats.cut_by_kill,
        "prompt_tokens": stats.prompt_tokens,
        "cached_tokens": stats.cached_tokens,
        "disk_tokens": stats.disk_tokens,
        "segment_files_seen": len(stats.segments_seen),
        "segment_files_removed": len(stats.segments_gone),
        "metrics_before_signal": dict(stats.metrics, scrapes=stats.metric_scrapes),
        "daemon_log_warnings": [
            {"pattern": k, "count": v[0], "example": v[1], "log": v[2]}
            for k, v in sorted(stats.log_lines.items(), key=lambda kv: -kv[1][0])],
        "total_seconds": round(seconds, 1),
        "failures": stats.failures,
        "config": {"seed": args.seed, "cycles_requested": args.cycles, "clients": args.clients,
                   "max_kill_ms": args.max_kill_ms, "sigterm_every": args.sigterm_every,
                   "cache_bytes": args.cache_bytes, "threads": args.threads,
                   "prompts": len(PROMPTS), "prompt_tokens_each": refs_tokens,
                   "max_tokens": MAX_TOKENS, "bin": args.bin, "model": args.model,
                   "work_dir": work, "cache_dir": cache_dir},
    }


def table(s):
    m = s["metrics_before_signal"]
    rows = [
        ("cycles", s["cycles"]),
        ("kills (SIGKILL)", s["kills"]),
        ("SIGTERM stops (exit 0)", s["sigterm_stops"] - s["bad_exits"]),
        ("answers checked", s["answers_checked"]),
        ("wrong answers", s["wrong_answers"]),
        ("failed starts", s["failed_starts"]),
        ("other errors", s["errors"]),
        ("bad SIGTERM exits", s["bad_exits"]),
        ("answers with disk_tokens > 0", s["answers_with_disk_tokens"]),
        ("  of them recovery checks", s["recovery_checks_from_disk"]),
        ("requests cut by the signal", s["requests_cut_by_signal"]),
        ("prompt / cached / disk tokens",
         f"{s['prompt_tokens']} / {s['cached_tokens']} / {s['disk_tokens']}"),
        ("segment files seen / removed",
         f"{s['segment_files_seen']} / {s['segment_files_removed']}"),
        ("disk blocks evicted (>=)", m["disk_blocks_evicted"]),
        ("corrupt blocks detected (>=)", m["corrupt_blocks"]),
        ("write-behind failed/dropped (>=)",
         f"{m['write_behind_failed']} / {m['write_behind_dropped']}"),
        ("total time", f"{s['total_seconds']:.1f} s"),
        ("result", f"FAIL ({len(s['failures'])} failures)" if s["failures"] else
         "INTERRUPTED (no failure so far)" if s.get("interrupted") else "PASS"),
    ]
    width = max(len(r[0]) for r in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    if s["daemon_log_warnings"]:
        out.append("daemon warnings/errors (count  pattern):")
        out.extend(f"  {w['count']:>6}  {w['pattern']}" for w in s["daemon_log_warnings"])
    return "\n".join(out)


def default_model():
    fixtures = os.environ.get("KVSTASH_FIXTURES")
    base = fixtures if fixtures else os.path.join(os.path.dirname(REPO), "shared", "models")
    return os.path.join(base, "stories260K.gguf")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1, help="seeds the kill delays and client order")
    ap.add_argument("--clients", type=int, default=4, help="concurrent client threads (4)")
    ap.add_argument("--max-kill-ms", type=float, default=300,
                    help="the daemon is signalled 0..this many ms after the clients start (300)")
    ap.add_argument("--sigterm-every", type=int, default=100,
                    help="every N-th cycle stops with SIGTERM and requires exit 0; 0 = never")
    ap.add_argument("--cache-bytes", default="1536K",
                    help="--cache-bytes of the daemon (1536K: a little less than the prompts' "
                         "~110 blocks of 16 KiB, so segments are evicted and written all along "
                         "while about half the answers still load blocks from disk; with 2M "
                         "or more everything fits after a few cycles and nothing is written)")
    ap.add_argument("--threads", type=int, default=0, help="kvstashd -t (0 = all cores)")
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("KVSTASH_BIN_DIR") or os.path.join(REPO, "build", "bin"), "kvstashd"))
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--work-dir", help="logs and the cache directory (default: a new temp dir)")
    ap.add_argument("--cache-dir", help="the persistent cache directory (default WORK/cache)")
    ap.add_argument("--start-timeout", type=float, default=60)
    ap.add_argument("--stop-timeout", type=float, default=60)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--keep-logs", type=int, default=5, help="logs of clean cycles kept (5)")
    ap.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                    help="do not copy the cache directory before each start")
    ap.add_argument("--progress", type=int, default=50, help="progress line every N cycles")
    ap.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    ap.add_argument("--json", action="store_true",
                    help="summary as JSON on stdout (the table goes to stderr)")
    args = ap.parse_args()
    if args.cycles < 1 or args.clients < 1 or args.progress < 1:
        ap.error("--cycles, --clients and --progress must be at least 1")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    work = os.path.abspath(args.work_dir) if args.work_dir else tempfile.mkdtemp(
        prefix="kvstash-soak-")
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    cache_dir = os.path.abspath(args.cache_dir) if args.cache_dir else os.path.join(work, "cache")
    stats = Stats()
    tokens = {}
    t0 = time.monotonic()
    interrupted = False
    try:
        for path, what in ((args.bin, "kvstashd"), (args.model, "the model")):
            if not os.path.exists(path):
                raise SetupError(f"{what} not found: {path}")
        log_progress(f"work dir {work}; cache dir {cache_dir}; computing references")
        refs, tokens = compute_references(args, work)
        for name, _ in PROMPTS:
            log_progress(f"reference {name} ({tokens[name]} prompt tokens): {refs[name]!r}")
        log_progress(f"{args.cycles} cycles, {args.clients} clients, seed {args.seed}, "
                     f"--cache-bytes {args.cache_bytes}")
        run_cycles(args, work, cache_dir, refs, stats)
    except SetupError as e:
        print(f"soak: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as e:
        interrupted = True
        log_progress(f"interrupted ({e or 'SIGINT'}) after {stats.cycles} cycles")
    finally:
        for d in list(Daemon.live):
            d.kill_and_reap()
    s = summary(args, stats, tokens, time.monotonic() - t0, work, cache_dir, interrupted)
    text = table(s)
    if args.json:
        print(text, file=sys.stderr, flush=True)
        print(json.dumps(s, indent=2), flush=True)
    else:
        print(text, flush=True)
        print(f"work dir: {work}", flush=True)
    if s["failures"]:
        return 1
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
