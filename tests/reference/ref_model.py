"""Independent float64 reference forward pass for GGUF `llama`, `qwen2`, `qwen3`, and (layers in
ref_hybrid.py) `qwen3moe`, `qwen35`, `qwen35moe`.

Semantics (GGUF / llama.cpp side):
  * a weight with GGUF dims [n_in, n_out] is a row-major (n_out, n_in) matrix; y = W @ x
  * RMSNorm: x / sqrt(mean(x^2) + eps) * w
  * RoPE, for pair index i in [0, n_rot/2): angle = pos * base^(-2i/n_rot) / ff[i]
    (ff = rope_freqs.weight when present, else 1; pos scaled by 1/factor for
    linear rope scaling). `llama` rotates interleaved pairs (2i, 2i+1) ("normal"),
    `qwen2`/`qwen3` rotate (i, i + n_rot/2) ("neox"). Dims >= n_rot pass through.
  * qwen3: per-head RMSNorm of Q and K (attn_q_norm / attn_k_norm) before RoPE
  * causal GQA attention, scale 1/sqrt(head_dim_k); SwiGLU FFN; tied lm head when
    output.weight is absent.
"""

import math

import numpy as np

from gguf_reader import GGUFFile, UnsupportedError, GGUFError, type_name, DEQUANT
import ref_hybrid

MOE_ARCHS = ("qwen3moe", "qwen35moe")
HYBRID_ARCHS = ("qwen35", "qwen35moe")
SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "qwen3moe", "qwen35", "qwen35moe")
ROPE_NORMAL = "normal"
ROPE_NEOX = "neox"
ROPE_STYLE = {"llama": ROPE_NORMAL, "qwen2": ROPE_NEOX, "qwen3": ROPE_NEOX,
              "qwen3moe": ROPE_NEOX, "qwen35": ROPE_NEOX, "qwen35moe": ROPE_NEOX}


def rms_norm(x, w, eps):
    x = np.asarray(x, dtype=np.float64)
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * w


def silu(x):
    with np.errstate(over="ignore"):   # exp(-x) -> inf for very negative x gives -0.0, as wanted
        return x / (1.0 + np.exp(-x))


def rope_inv_freq(n_rot, base, freq_factors=None):
    """Per-pair angular frequency (radians per position), length n_rot/2."""
    i = np.arange(n_rot // 2, dtype=np.float64)
    inv = base ** (-2.0 * i / n_rot)
    if freq_factors is not None:
        inv = inv / np.asarray(freq_factors, dtype=np.float64)
    return inv


def apply_rope(x, positions, inv_freq, n_rot, style):
    """x: (T, H, D); positions: (T,) float; returns a rotated copy."""
    x = np.array(x, dtype=np.float64, copy=True)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]   # (T, n_rot/2)
    cos = np.cos(ang)[:, None, :]
    sin = np.sin(ang)[:, None, :]
    half = n_rot // 2
    if style == ROPE_NORMAL:
        a = x[:, :, 0:n_rot:2].copy()
        b = x[:, :, 1:n_rot:2].copy()
        x[:, :, 0:n_rot:2] = a * cos - b * sin
        x[:, :, 1:n_rot:2] = a * sin + b * cos
    elif style == ROPE_NEOX:
        a = x[:, :, 0:half].copy()
        b = x[:, :, half:n_rot].copy()
        x[:, :, 0:half] = a * cos - b * sin
        x[:, :, half:n_rot] = a * sin + b * cos
    else:
        raise ValueError(style)
    return x


class KVCache(object):
    def __init__(self, n_layer):
        self.k = [None] * n_layer   # each (n_kv_head, S, head_dim_k)
        self.v = [None] * n_layer   # each (n_kv_head, S, head_dim_v)
        self.recurrent = {}         # layer -> ref_hybrid.DeltaNetState (hybrid models)
        self.n_past = 0


def _meta_int(g, key, default=None, layer=None):
    v = g.get(key, default)
    if v is None:
        return None
    if isinstance(v, (list, np.ndarray)):
        if len(v) == 0:
            return default
        v = v[layer if layer is not None else 0]
    return int(v)


class Model(object):
    def __init__(self, path):
        g = GGUFFile(path)
        self.gguf = g
        arch = g.get("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            raise UnsupportedError("architecture %r is not supported (supported: %s)"
                                   % (arch, ", ".join(SUPPORTED_ARCHS)))
        self.arch = arch
        for name, ti in g.tensors.items():
            if ti.type not in DEQUANT:
                raise UnsupportedError("tensor %r has type %s, not supported by the reference"
                                       % (name, type_name(ti.type)))

        def need(key):
            v = g.get(key)
            if v is None:
                raise GGUFError("missing metadata key %s" % key)
            return v

        A = arch + "."
        self.n_embd = int(need(A + "embedding_length"))
        self.n_layer = int(need(A + "block_count"))
        if arch in HYBRID_ARCHS:   # block_count includes the multi-token-prediction blocks
            self.n_layer -= int(g.get(A + "nextn_predict_layers", 0))
        self.eps = float(need(A + "attention.layer_norm_rms_epsilon"))
        self.n_ff = g.get(A + "feed_forward_length")
        self.n_head = [_meta_int(g, A + "attention.head_count", layer=il)
                       for il in range(self.n_layer)]
        if any(h is None or h <= 0 for h in self.n_head):
            raise GGUFError("missing or bad %sattention.head_count" % A)
        self.n_head_kv = [_meta_int(g, A + "attention.head_count_kv", self.n_head[il], layer=il)
                          for il in range(self.n_layer)]
        kl = g.get(A + "attention.key_length")
        self.head_dim_k = int(kl) if kl is not None else self.n_embd // self.n_head[0]
        vl = g.get(A + "attention.value_length")
        self.head_dim_v = int(vl) if vl is not None else self.head_dim_k
        self.n_rot = int(g.get(A + "rope.dimension_count", self.head_dim_k))
        if self.n_rot % 2 or self.n_rot > self.head_dim_k:
            raise GGUFError("bad rope.dimension_count %d for head_dim %d"
                            % (self.n_rot, self.head_dim_k))
        self.rope_base = float(g.get(A + "rope.freq_base", 10000.0))
        self.rope_style = ROPE_STYLE[arch]

        # rope scaling: only "none" and "linear" are implemented
        self.pos_scale = 1.0
        stype = g.get(A + "rope.scaling.type")
        sfactor = g.get(A + "rope.scaling.factor")
        if stype is None and g.get(A + "rope.scale_linear") is not None:
            stype, sfactor = "linear", g.get(A + "rope.scale_linear")
        if stype in (None, "none"):
            pass
        elif stype == "linear":
            if sfactor is not None and float(sfactor) > 0:
                self.pos_scale = 1.0 / float(sfactor)
        else:
            raise UnsupportedError("rope scaling type %r is not supported" % stype)

        ff = None
        if "rope_freqs.weight" in g:
            ff = g.tensor("rope_freqs.weight").reshape(-1)
            if ff.size != self.n_rot // 2:
                raise GGUFError("rope_freqs.weight has %d values, expected %d"
                                % (ff.size, self.n_rot // 2))
        self.inv_freq = rope_inv_freq(self.n_rot, self.rope_base, ff)
        if arch in HYBRID_ARCHS:
            self.inv_freq = ref_hybrid.text_rope_inv_freq(
                self.n_rot, self.rope_base, [int(v) for v in need(A + "rope.dimension_sections")])

        # weights
        self.tok_embd = self._w("token_embd.weight")
        self.n_vocab = self.tok_embd.shape[0]
        if self.tok_embd.shape[1] != self.n_embd:
            raise GGUFError("token_embd.weight has width %d, embedding_length is %d"
                            % (self.tok_embd.shape[1], self.n_embd))
        self.output_norm = self._w("output_norm.weight")
        if "output.weight" in g:
            self.output = self._w("output.weight")
        else:
            self.output = self.tok_embd
        self.layers = []
        if arch in MOE_ARCHS or arch in HYBRID_ARCHS:
            self._load_moe_hybrid(A, need)
            return
        for il in range(self.n_layer):
            p = "blk.%d." % il
            L = {}
            for nm in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                       "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"):
                L[nm] = self._w(p + nm + ".weight")
            for nm in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                L[nm + ".bias"] = self._w(p + nm + ".bias") if (p + nm + ".bias") in g else None
            if arch == "qwen3":
                L["attn_q_norm"] = self._w(p + "attn_q_norm.weight")
                L["attn_k_norm"] = self._w(p + "attn_k_norm.weight")
            else:
                L["attn_q_norm"] = self._w(p + "attn_q_norm.weight") if (p + "attn_q_norm.weight") in g else None
                L["attn_k_norm"] = self._w(p + "attn_k_norm.weight") if (p + "attn_k_norm.weight") in g else None
            nh, nkv = self.n_head[il], self.n_head_kv[il]
            if nh % nkv:
                raise GGUFError("head_count %d not a multiple of head_count_kv %d" % (nh, nkv))
            exp = {"attn_q": (nh * self.head_dim_k, self.n_embd),
                   "attn_k": (nkv * self.head_dim_k, self.n_embd),
                   "attn_v": (nkv * self.head_dim_v, self.n_embd),
                   "attn_output": (self.n_embd, nh * self.head_dim_v)}
            for nm, shp in exp.items():
                if L[nm].shape != shp:
                    raise GGUFError("%s%s.weight has numpy shape %r, expected %r"
                                    % (p, nm, L[nm].shape, shp))
            self.layers.append(L)

    def _load_moe_hybrid(self, A, need):
        g = self.gguf
        if self.arch in MOE_ARCHS:
            self.n_expert_used = int(need(A + "expert_used_count"))
        self.recurrent = [False] * self.n_layer
        if self.arch in HYBRID_ARCHS:
            self.ssm = {"n_k": int(need(A + "ssm.group_count")),
                        "n_v": int(need(A + "ssm.time_step_rank")),
                        "d_k": int(need(A + "ssm.state_size")),
                        "d_conv": int(need(A + "ssm.conv_kernel"))}
            rl = g.get(A + "attention.recurrent_layers")
            interval = int(g.get(A + "full_attention_interval", 4))
            self.recurrent = [bool(rl[il]) if rl is not None else (il + 1) % interval != 0
                              for il in range(self.n_layer)]
        for il in range(self.n_layer):
            p = "blk.%d." % il
            names = ["attn_norm"]
            names += ["post_attention_norm"] if self.arch in HYBRID_ARCHS else ["ffn_norm"]
            if self.recurrent[il]:
                names += ["attn_qkv", "attn_gate", "ssm_conv1d", "ssm_beta", "ssm_alpha",
                          "ssm_norm", "ssm_out"]
            else:
                names += ["attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm",
                          "attn_k_norm"]
            if self.arch in MOE_ARCHS:
                names += ["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
                if p + "ffn_up_shexp.weight" in g:
                    names += ["ffn_gate_inp_shexp", "ffn_gate_shexp", "ffn_up_shexp",
                              "ffn_down_shexp"]
            else:
                names += ["ffn_gate", "ffn_up", "ffn_down"]
            L = {nm: self._w(p + nm + ".weight") for nm in names}
            if self.recurrent[il]:
                L["ssm_dt.bias"] = self._w(p + "ssm_dt.bias").reshape(-1)
                L["ssm_a"] = self._w(p + "ssm_a").reshape(-1)
                L["ssm_norm"] = L["ssm_norm"].reshape(-1)
            if "ffn_gate_inp_shexp" in L:
                L["ffn_gate_inp_shexp"] = L["ffn_gate_inp_shexp"].reshape(-1)
            if "post_attention_norm" in L:
                L["ffn_norm"] = L["post_attention_norm"]
            self.layers.append(L)

    def _attention(self, il, L, h, cache, rope_pos, mask, gated):
        T = h.shape[0]
        nh, nkv = self.n_head[il], self.n_head_kv[il]
        dk, dv = self.head_dim_k, self.head_dim_v
        qf = h @ L["attn_q"].T
        gate = None
        if gated:   # per head [q, gate]
            qf = qf.reshape(T, nh, 2, dk)
            q, gate = qf[:, :, 0, :], qf[:, :, 1, :].reshape(T, nh * dk)
        else:
            q = qf.reshape(T, nh, dk)
        k = (h @ L["attn_k"].T).reshape(T, nkv, dk)
        v = (h @ L["attn_v"].T).reshape(T, nkv, dv)
        q = rms_norm(q, L["attn_q_norm"], self.eps)
        k = rms_norm(k, L["attn_k_norm"], self.eps)
        q = apply_rope(q, rope_pos, self.inv_freq, self.n_rot, self.rope_style)
        k = apply_rope(k, rope_pos, self.inv_freq, self.n_rot, self.rope_style)
        kt, vt = k.transpose(1, 0, 2), v.transpose(1, 0, 2)
        if cache.k[il] is None:
            cache.k[il], cache.v[il] = kt, vt
        else:
            cache.k[il] = np.concatenate([cache.k[il], kt], axis=1)
            cache.v[il] = np.concatenate([cache.v[il], vt], axis=1)
        K, V = cache.k[il], cache.v[il]
        grp = nh // nkv
        qh = q.transpose(1, 0, 2).reshape(nkv, grp, T, dk)
        sc = np.einsum("gitd,gsd->gits", qh, K) / math.sqrt(dk)
        sc = np.where(mask[None, None], -np.inf, sc)
        sc = sc - sc.max(axis=-1, keepdims=True)
        pr = np.exp(sc)
        pr /= pr.sum(axis=-1, keepdims=True)
        o = np.einsum("gits,gsd->gitd", pr, V).reshape(nh, T, dv).transpose(1, 0, 2)
        o = o.reshape(T, nh * dv)
        if gate is not None:
            o = o / (1.0 + np.exp(-gate))
        return o @ L["attn_output"].T

    def _forward_moe_hybrid(self, x, cache, rope_pos, mask, taps):
        for il, L in enumerate(self.layers):
            lt = {} if taps is not None else None
            h = rms_norm(x, L["attn_norm"], self.eps)
            if self.recurrent[il]:
                st = cache.recurrent.get(il)
                if st is None:
                    hp = self.ssm
                    conv_dim = (2 * hp["n_k"] + hp["n_v"]) * hp["d_k"]
                    st = ref_hybrid.DeltaNetState(hp["d_conv"], conv_dim, hp["n_v"], hp["d_k"],
                                                  hp["d_k"])
                    cache.recurrent[il] = st
                mix = ref_hybrid.deltanet_layer(h, L, st, self.ssm, self.eps, lt)
            else:
                mix = self._attention(il, L, h, cache, rope_pos, mask,
                                      gated=self.arch in HYBRID_ARCHS)
            x = x + mix
            h = rms_norm(x, L["ffn_norm"], self.eps)
            if self.arch in MOE_ARCHS:
                ffn = ref_hybrid.moe_ffn(h, L, self.n_expert_used, lt)
            else:
                ffn = (silu(h @ L["ffn_gate"].T) * (h @ L["ffn_up"].T)) @ L["ffn_down"].T
            x = x + ffn
            if lt is not None:
                lt["mixer_out"], lt["ffn_out"], lt["l_out"] = mix, ffn, x
                taps[il] = lt
        return x

    def _w(self, name):
        if name not in self.gguf:
            raise GGUFError("missing tensor %s" % name)
        w = self.gguf.tensor(name)
        if w.ndim == 2 and w.shape[0] == 1 and name.endswith(("norm.weight", ".bias")):
            w = w.reshape(-1)
        return w

    def new_cache(self):
        return KVCache(self.n_layer)

    @staticmethod
    def _lin(x, w, b):
        y = x @ w.T
        if b is not None:
            y = y + b
        return y

    def forward(self, ids, cache=None, logits_rows=None, taps=None):
        """Run tokens `ids` at positions cache.n_past.. and append to the cache.

        Returns logits (len(rows), n_vocab) for `logits_rows` (indices into ids;
        default: all rows)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("no tokens")
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise ValueError("token id out of range [0, %d)" % self.n_vocab)
        if cache is None:
            cache = self.new_cache()
        T = ids.size
        p0 = cache.n_past
        pos = np.arange(p0, p0 + T, dtype=np.float64)
        rope_pos = pos * self.pos_scale
        S = p0 + T
        # causal mask: query t (absolute p0+t) sees keys s <= p0+t
        mask = np.arange(S)[None, :] > (p0 + np.arange(T))[:, None]   # (T, S) True = hidden

        x = self.tok_embd[ids].astype(np.float64)                       # (T, D)
        if self.arch in MOE_ARCHS or self.arch in HYBRID_ARCHS:
            x = self._forward_moe_hybrid(x, cache, rope_pos, mask, taps)
        for il, L in (enumerate(self.layers) if self.arch not in MOE_ARCHS + HYBRID_ARCHS
                      else []):
            nh, nkv = self.n_head[il], self.n_head_kv[il]
            dk, dv = self.head_dim_k, self.head_dim_v
            h = rms_norm(x, L["attn_norm"], self.eps)
            q = self._lin(h, L["attn_q"], L["attn_q.bias"]).reshape(T, nh, dk)
            k = self._lin(h, L["attn_k"], L["attn_k.bias"]).reshape(T, nkv, dk)
            v = self._lin(h, L["attn_v"], L["attn_v.bias"]).reshape(T, nkv, dv)
            if L["attn_q_norm"] is not None:
                q = rms_norm(q, L["attn_q_norm"], self.eps)
            if L["attn_k_norm"] is not None:
                k = rms_norm(k, L["attn_k_norm"], self.eps)
            q = apply_rope(q, rope_pos, self.inv_freq, self.n_rot, self.rope_style)
            k = apply_rope(k, rope_pos, self.inv_freq, self.n_rot, self.rope_style)

            kt = k.transpose(1, 0, 2)       # (nkv, T, dk)
            vt = v.transpose(1, 0, 2)
            if cache.k[il] is None:
                cache.k[il], cache.v[il] = kt, vt
            else:
                cache.k[il] = np.concatenate([cache.k[il], kt], axis=1)
                cache.v[il] = np.concatenate([cache.v[il], vt], axis=1)
            K, V = cache.k[il], cache.v[il]    # (nkv, S, d)

            grp = nh // nkv
            qh = q.transpose(1, 0, 2).reshape(nkv, grp, T, dk)          # head h -> kv head h // grp
            sc = np.einsum("gitd,gsd->gits", qh, K) / math.sqrt(dk)     # (nkv, grp, T, S)
            sc = np.where(mask[None, None], -np.inf, sc)
            sc = sc - sc.max(axis=-1, keepdims=True)
            pr = np.exp(sc)
            pr /= pr.sum(axis=-1, keepdims=True)
            o = np.einsum("gits,gsd->gitd", pr, V)                      # (nkv, grp, T, dv)
            o = o.reshape(nh, T, dv).transpose(1, 0, 2).reshape(T, nh * dv)
            x = x + self._lin(o, L["attn_output"], L["attn_output.bias"])

            h = rms_norm(x, L["ffn_norm"], self.eps)
            gt = self._lin(h, L["ffn_gate"], L["ffn_gate.bias"])
            up = self._lin(h, L["ffn_up"], L["ffn_up.bias"])
            x = x + self._lin(silu(gt) * up, L["ffn_down"], L["ffn_down.bias"])

        cache.n_past = S
        if logits_rows is None:
            rows = np.arange(T)
        else:
            rows = np.asarray(logits_rows, dtype=np.int64)
        hN = rms_norm(x[rows], self.output_norm, self.eps)
        return hN @ self.output.T

    def greedy(self, ids, n, cache=None):
        """Greedy continuation: n argmax tokens after `ids` (KV cached).
        Returns (tokens, logits of the prompt's last position)."""
        cache = cache if cache is not None else self.new_cache()
        logits = self.forward(ids, cache, logits_rows=[len(ids) - 1])[0]
        out = []
        for _ in range(n):
            t = int(np.argmax(logits))
            out.append(t)
            if len(out) == n:
                break
            logits = self.forward([t], cache, logits_rows=[0])[0]
        return out
