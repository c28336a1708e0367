"""Float64 reference for `qwen3moe`, `qwen35` and `qwen35moe` layers, written from the math
(Gated DeltaNet and Qwen3-MoE papers / model definitions as documented in
shared/reference/qwen35-hybrid.md), not from the C++ code.

GGUF conventions (as llama.cpp's converter writes them):
  * MoE: router W_r (n_expert, n_embd); p = softmax(W_r h); the top-k experts by p; weights
    w = p[top] / max(sum p[top], 2^-14); out = sum_k w_k * down_e(silu(gate_e h) * up_e h).
    Shared expert (qwen35moe): + sigmoid(w_s . h) * down_s(silu(gate_s h) * up_s h).
  * Gated DeltaNet layer, per token t, value head j using key head j % H_k (tiled order):
      qkv = conv_silu(W_qkv h)   (depthwise causal conv of width K over time, state = last K-1
                                  inputs, then SiLU)
      q, k = l2norm per head (x / sqrt(sum x^2 + eps)); q *= 1/sqrt(d_k)
      beta = sigmoid(W_beta h); g = softplus(W_alpha h + dt_bias) * ssm_a   (ssm_a = -exp(A_log))
      S_t = exp(g) (I - beta k k^T) S_{t-1} + beta k v^T       (S: d_k x d_v)
      o_t = S_t^T q
      y = W_out (rmsnorm(o per head) * ssm_norm * silu(z)),  z = W_gate h
  * Full-attention layer (qwen35*): W_q gives per head [q (D), gate (D)]; q/k per-head RMSNorm;
    RoPE on the first n_rot dims of each head, NeoX pairs (i, i + n_rot/2); with
    rope.dimension_sections (interleaved m-rope), pair i uses axis i % 3 (t, h, w) while
    i < 3 * sections[axis] (within sum(sections)), else axis e, whose text position is 0;
    attention output * sigmoid(gate), then W_o.
  * Block: h = x + mixer(rmsnorm(x)); x' = h + ffn(rmsnorm_post(h)).
"""

import math

import numpy as np


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _silu(x):
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.logaddexp(0.0, x)


def moe_ffn(h, L, n_used, taps=None):
    """h: (T, D) normed input. L: dict with ffn_gate_inp (E, D), ffn_{gate,up}_exps (E, F, D),
    ffn_down_exps (E, D, F), optional shared expert. Returns (T, D)."""
    logits = h @ L["ffn_gate_inp"].T                                   # (T, E)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    # top-k by probability, ties to the lower expert id (stable sort of -p)
    top = np.argsort(-p, axis=-1, kind="stable")[:, :n_used]          # (T, k)
    w = np.take_along_axis(p, top, axis=-1)
    w = w / np.maximum(w.sum(axis=-1, keepdims=True), 2.0 ** -14)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        for s in range(n_used):
            e = top[t, s]
            a = _silu(L["ffn_gate_exps"][e] @ h[t]) * (L["ffn_up_exps"][e] @ h[t])
            out[t] += w[t, s] * (L["ffn_down_exps"][e] @ a)
    if taps is not None:
        taps["moe_router"] = logits
        taps["moe_ids"] = top.astype(np.float64)
        taps["moe_weights"] = w
        taps["moe_routed"] = out.copy()
    if "ffn_up_shexp" in L:
        a = _silu(h @ L["ffn_gate_shexp"].T) * (h @ L["ffn_up_shexp"].T)
        sh = a @ L["ffn_down_shexp"].T
        gate = _sigmoid(h @ L["ffn_gate_inp_shexp"])                    # (T,)
        out = out + gate[:, None] * sh
    return out


class DeltaNetState(object):
    """Per-layer recurrent state of one sequence."""

    def __init__(self, d_conv, conv_dim, n_v, d_k, d_v):
        self.conv = np.zeros((d_conv - 1, conv_dim))                   # last K-1 inputs
        self.S = np.zeros((n_v, d_k, d_v))                             # per value head


def deltanet_layer(h, L, st, hp, eps, taps=None):
    """h: (T, D) normed input; st: DeltaNetState (updated). hp: dict of n_k, n_v, d_k, d_conv."""
    n_k, n_v, dk = hp["n_k"], hp["n_v"], hp["d_k"]
    dv = dk
    key_dim = n_k * dk
    T = h.shape[0]
    qkv = h @ L["attn_qkv"].T                                          # (T, conv_dim)
    z = h @ L["attn_gate"].T                                           # (T, n_v * dv)
    beta = _sigmoid(h @ L["ssm_beta"].T)                               # (T, n_v)
    g = _softplus(h @ L["ssm_alpha"].T + L["ssm_dt.bias"]) * L["ssm_a"]  # (T, n_v)
    # causal depthwise conv over [state; qkv] along time; weight (conv_dim, K)
    W = L["ssm_conv1d"]
    K = W.shape[1]
    seq = np.concatenate([st.conv, qkv], axis=0)                       # (K-1+T, C)
    conv = np.stack([(seq[t:t + K] * W.T).sum(axis=0) for t in range(T)])
    st.conv = seq[-(K - 1):].copy()
    x = _silu(conv)
    q = x[:, :key_dim].reshape(T, n_k, dk)
    k = x[:, key_dim:2 * key_dim].reshape(T, n_k, dk)
    v = x[:, 2 * key_dim:].reshape(T, n_v, dv)
    q = q / np.sqrt((q * q).sum(axis=-1, keepdims=True) + eps) / math.sqrt(dk)
    k = k / np.sqrt((k * k).sum(axis=-1, keepdims=True) + eps)
    o = np.zeros((T, n_v, dv))
    I = np.eye(dk)
    for t in range(T):
        for j in range(n_v):
            kk, qq = k[t, j % n_k], q[t, j % n_k]
            S = st.S[j]
            S = math.exp(g[t, j]) * ((I - beta[t, j] * np.outer(kk, kk)) @ S) \
                + beta[t, j] * np.outer(kk, v[t, j])
            st.S[j] = S
            o[t, j] = S.T @ qq
    if taps is not None:
        taps["gdn_conv"] = x
        taps["gdn_o"] = o.reshape(T, n_v * dv)
    y = _rms(o, L["ssm_norm"], eps) * _silu(z.reshape(T, n_v, dv))
    return y.reshape(T, n_v * dv) @ L["ssm_out"].T


def text_rope_inv_freq(n_rot, base, sections):
    """Per-pair frequency; 0 for pairs on the m-rope axis that text leaves at position 0."""
    inv = base ** (-2.0 * np.arange(n_rot // 2) / n_rot)
    if sections is not None:
        total = int(sum(sections))
        for i in range(n_rot // 2):
            s = i % total
            axis = s % 3
            if not s < 3 * sections[axis]:
                inv[i] = 0.0
    return inv
