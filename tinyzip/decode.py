"""Greedy decoding and beam search for ``Seq2Seq``, batched over sentences, with cached K/V.

Both run the encoder once (``model.encode``, which also projects every decoder layer's
cross-attention keys and values) and then one ``model.decode_step`` per output position, which
appends the new token's self-attention keys and values to the cache. ``matmuls`` and
``act_hooks`` (inference-time weight overrides and activation quantizers) are passed through.
Outputs are token-id lists without BOS and EOS. ``max_len`` bounds the number of decoding steps (EOS included).

Beam search scores a finished hypothesis Y by log P(Y | X) / lp(Y) with the GNMT length penalty
(Wu et al. 2016, "Google's Neural Machine Translation System", arXiv:1609.08144, Eq. 14, no
coverage penalty, as in Vaswani et al. 2017 with beam 4 and alpha = 0.6):

    lp(Y) = ((5 + |Y|) / (5 + 1)) ** alpha,      |Y| = number of generated tokens incl. EOS

Each step keeps the 2 * beam_size best continuations of every sentence; an EOS among the best
beam_size finishes a hypothesis, the best non-EOS ones stay alive. A sentence stops when it has
beam_size finished hypotheses (fairseq's rule, so beam size 1 equals greedy), or at ``max_len``,
where the surviving hypotheses are finished as they are.
"""
import numpy as np

BOS, EOS, PAD = 1, 2, 0


def _check(src, max_len):
    src = np.asarray(src)
    if src.ndim != 2 or not np.issubdtype(src.dtype, np.integer):
        raise ValueError(f"src must be (B, S) integer token ids, got {src.dtype} {src.shape}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return src


def greedy_decode(model, params, src, max_len, matmuls=None, act_hooks=None):
    """argmax at every step until EOS or ``max_len`` steps. src: (B, S) -> B token-id lists."""
    src = _check(src, max_len)
    enc = model.encode(params, src, matmuls=matmuls, act_hooks=act_hooks)
    out = [[] for _ in range(len(src))]
    alive = np.arange(len(src))  # sentence of each row
    prev, state = np.full(len(src), BOS), None
    for _ in range(max_len):
        logp, state = model.decode_step(params, enc, prev, state, matmuls=matmuls,
                                         act_hooks=act_hooks)
        prev = logp.argmax(-1)  # (B_alive,)
        for b, tok in zip(alive, prev):
            if tok != EOS:
                out[b].append(int(tok))
        keep = np.flatnonzero(prev != EOS)
        if keep.size == 0:
            break
        if keep.size < alive.size:
            alive, prev = alive[keep], prev[keep]
            enc, state = model.reorder_state(enc, keep), model.reorder_state(state, keep)
    return out


def top_candidates(cand, n):
    """Per row, the indices of the ``n`` largest entries, best first, ties by lower index:
    ``np.argsort(-cand, axis=1, kind="stable")[:, :n]`` without sorting all K * V entries (the
    full sort was 80% of beam search's time at V = 8k). cand: (B, M) float, n <= M."""
    B, M = cand.shape
    n = min(n, M)
    nth = np.partition(cand, M - n, axis=1)[:, M - n]  # the n-th largest value of each row
    rows, cols = np.nonzero(cand >= nth[:, None])  # at least n per row (more on ties)
    order = np.lexsort((cols, -cand[rows, cols], rows))  # by row, value descending, index
    rows, cols = rows[order], cols[order]
    rank = np.arange(rows.size) - np.searchsorted(rows, rows)  # position within its row
    return cols[rank < n].reshape(B, n)


def length_penalty(length, alpha):
    """GNMT lp(Y) = ((5 + |Y|) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(model, params, src, beam_size=4, max_len=50, alpha=0.6, matmuls=None,
                act_hooks=None):
    """Beam search with the GNMT length penalty. src: (B, S) -> B token-id lists (the best)."""
    src = _check(src, max_len)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    K = beam_size
    enc = model.encode(params, src, matmuls=matmuls, act_hooks=act_hooks)
    alive = list(range(len(src)))  # sentence of each group of K rows
    enc = model.reorder_state(enc, np.repeat(np.arange(len(src)), K))
    seqs = [[] for _ in range(len(src) * K)]  # tokens of each row's hypothesis
    scores = np.full((len(src), K), -np.inf)  # (B_alive, K) log P so far
    scores[:, 0] = 0.0  # all K rows start equal: expand only the first
    finished = [[] for _ in range(len(src))]  # (normalised score, tokens)
    prev, state = np.full(len(src) * K, BOS), None
    for step in range(max_len):
        logp, state = model.decode_step(params, enc, prev, state, matmuls=matmuls,
                                         act_hooks=act_hooks)
        V = logp.shape[1]
        cand = (scores[:, :, None] + logp.reshape(len(alive), K, V)).reshape(len(alive), K * V)
        top = top_candidates(cand, 2 * K)  # (B_alive, 2K)
        lp = length_penalty(step + 1, alpha)
        rows, toks, new_scores, still = [], [], [], []
        for g, b in enumerate(alive):
            chosen = []
            for rank, c in enumerate(top[g]):
                k, v, s = c // V, c % V, cand[g, c]
                if s == -np.inf:
                    break
                parent = g * K + k
                if v == EOS or step == max_len - 1:
                    if rank < K:
                        tail = [] if v == EOS else [int(v)]
                        finished[b].append((s / lp, seqs[parent] + tail))
                    continue
                chosen.append((parent, int(v), s))
                if len(chosen) == K:
                    break
            if len(finished[b]) >= K or step == max_len - 1 or not chosen:
                continue
            chosen += [(g * K, PAD, -np.inf)] * (K - len(chosen))  # dead rows keep the shape
            still.append(b)
            for parent, v, s in chosen:
                rows.append(parent)
                toks.append(v)
                new_scores.append(s)
        if not still:
            break
        index = np.array(rows)
        seqs = [seqs[r] + [t] for r, t in zip(rows, toks)]
        alive, prev = still, np.array(toks)
        scores = np.array(new_scores).reshape(len(still), K)
        enc, state = model.reorder_state(enc, index), model.reorder_state(state, index)
    return [max(f, key=lambda h: h[0])[1] for f in finished]
