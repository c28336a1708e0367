#!/usr/bin/python3
"""The numpy dequantizers of Q3_K, Q5_K, IQ4_NL and IQ4_XS (gguf_reader.py, written from the
block layouts) against llama.cpp: blocks that ggml's own quantizer made decode to exactly the
floats ggml's dequantizer gave (tests/engine/gguf/quant_goldens/, see its README.md). The C++
dequantizers are held to the same files by tests/engine/gguf/quant_golden_test.cc."""
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gguf_reader as gr  # noqa: E402

GOLDENS = os.path.join(HERE, "..", "engine", "gguf", "quant_goldens")


def load(name):
    raw = open(os.path.join(GOLDENS, name + ".kvqg"), "rb").read()
    assert raw[:4] == b"KVQG", name
    t, n = struct.unpack("<II", raw[4:12])
    qk, bs = gr.BLOCK_INFO[t]
    nbytes = n // qk * bs
    assert len(raw) == 12 + 8 * n + nbytes, name
    x = np.frombuffer(raw, "<f4", n, 12)
    blocks = np.frombuffer(raw, np.uint8, nbytes, 12 + 4 * n)
    y = np.frombuffer(raw, "<f4", n, 12 + 4 * n + nbytes)
    return t, x, blocks, y


def main():
    failed = 0
    for name in ("q3_K", "q5_K", "iq4_nl", "iq4_xs"):
        t, x, blocks, want = load(name)
        got = gr.dequantize(blocks, t).astype(np.float32)
        bad = np.nonzero(got != want)[0]
        rel = float(np.sqrt(np.sum((x.astype(np.float64) - want) ** 2) / np.sum(x.astype(np.float64) ** 2)))
        if bad.size:
            failed += 1
            print("FAIL %s: %d of %d elements differ, first %d: %r vs %r"
                  % (name, bad.size, want.size, bad[0], got[bad[0]], want[bad[0]]))
        else:
            print("ok   %s: %d elements equal to ggml's dequantization (ggml rel rmse %.4f)"
                  % (name, want.size, rel))
    print("%d passed, %d failed" % (4 - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
