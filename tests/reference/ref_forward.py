#!/usr/bin/python3
"""Reference forward pass CLI (float64, numpy).

usage: /usr/bin/python3 tests/reference/ref_forward.py MODEL.gguf --ids "1 403 407"
           [--positions all|last|0,1,2] [--greedy N] --out FILE.json

Writes JSON:
  {"logits":    [[n_vocab floats] for each requested position],
   "positions": [indices into --ids, in the order of "logits"],
   "greedy":    [N token ids continuing after --ids]   ([] without --greedy),
   "n_vocab":   int,
   "arch":      str}
Positions are indices into the --ids list (token i sits at sequence position i).
Exit status: 0 ok, 2 unsupported architecture/tensor type (or bad arguments),
1 other errors (unreadable/malformed file), 3 numpy missing (wrong interpreter).
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import numpy  # noqa: F401
except ImportError:
    sys.stderr.write("%s: numpy is not available for %s; run it with /usr/bin/python3\n"
                     % (os.path.basename(__file__), sys.executable))
    sys.exit(3)
from gguf_reader import GGUFError, UnsupportedError  # noqa: E402
from ref_model import Model  # noqa: E402
import numpy as np  # noqa: E402


def parse_ids(s):
    toks = [t for t in re.split(r"[\s,]+", s.strip()) if t]
    if not toks:
        raise ValueError("--ids is empty")
    return [int(t) for t in toks]


def parse_positions(s, n):
    s = s.strip().lower()
    if s == "all":
        return list(range(n))
    if s == "last":
        return [n - 1]
    if s in ("none", ""):
        return []
    out = []
    for t in s.split(","):
        t = t.strip()
        if not t:
            continue
        p = int(t)
        if p < 0:
            p += n
        if not 0 <= p < n:
            raise ValueError("position %s out of range for %d ids" % (t, n))
        out.append(p)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="kvstash float64 reference forward pass")
    ap.add_argument("model")
    ap.add_argument("--ids", required=True, help='token ids, e.g. "1 403 407"')
    ap.add_argument("--positions", default="last",
                    help="all | last | none | comma list of indices into --ids (default last)")
    ap.add_argument("--greedy", type=int, default=0, help="greedy continuation length")
    ap.add_argument("--out", required=True, help="output JSON file ('-' for stdout)")
    ap.add_argument("--taps", default="",
                    help="qwen3moe/qwen35/qwen35moe: comma list of layers whose intermediate "
                         "tensors of the prompt pass go to 'taps' {layer: {name: rows}}")
    a = ap.parse_args(argv)

    try:
        ids = parse_ids(a.ids)
        positions = parse_positions(a.positions, len(ids))
    except ValueError as e:
        print("ref_forward: error: %s" % e, file=sys.stderr)
        return 2
    if a.greedy < 0:
        print("ref_forward: error: --greedy must be >= 0", file=sys.stderr)
        return 2

    try:
        model = Model(a.model)
    except UnsupportedError as e:
        print("ref_forward: unsupported: %s" % e, file=sys.stderr)
        return 2
    except (GGUFError, OSError) as e:
        print("ref_forward: error reading %s: %s" % (a.model, e), file=sys.stderr)
        return 1

    try:
        cache = model.new_cache()
        rows = sorted(set(positions) | ({len(ids) - 1} if a.greedy else set()))
        taps = {} if a.taps else None
        logits = model.forward(ids, cache, logits_rows=rows or [0], taps=taps)
        by_pos = {p: logits[i] for i, p in enumerate(rows)} if rows else {}
        greedy = []
        if a.greedy:
            lg = by_pos[len(ids) - 1]
            while True:
                t = int(lg.argmax())
                greedy.append(t)
                if len(greedy) == a.greedy:
                    break
                lg = model.forward([t], cache, logits_rows=[0])[0]
    except ValueError as e:
        print("ref_forward: error: %s" % e, file=sys.stderr)
        return 2

    result = {
        "logits": [by_pos[p].tolist() for p in positions],
        "positions": positions,
        "greedy": greedy,
        "n_vocab": int(model.n_vocab),
        "arch": model.arch,
    }
    if taps is not None:
        want = [int(v) for v in a.taps.split(",")]
        result["taps"] = {str(il): {k: np.asarray(v).tolist() for k, v in taps[il].items()}
                          for il in want if il in taps}
    text = json.dumps(result, separators=(",", ":"))
    if a.out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
