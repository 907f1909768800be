"""The plans: which rows the demo table has, for each task, quick or ``--full``.

``plan(task, full)`` is the explicit list of ``(row function, settings)`` pairs (no registry): the
demo's representative settings, the quick task's grids, and the Bible model's ``--full`` recipes
(the reference runs' budgets). The row functions are in ``rows.py``; ``report.run_demo`` runs the
plan, and ``row_name`` is each row's key in the JSON, which a resumed run uses to skip rows
already measured.
"""
from tinyzip.rows import (row_binarization, row_binary_codes, row_deep_compression, row_distilled_student,
                          row_ffn_pruning, row_head_pruning, row_hessian_mixed, row_kmeans, row_layerdrop, row_lottery,
                          row_low_rank, row_pruning, row_sharing, row_ternary, row_uniform)


def plan(task: str, full: bool):
    """The rows, in the order of the table (an explicit list: no registry). ``steps`` is each
    row's fine-tuning budget; 0 means post-training only.

    On the real model (bible-es) the quick plan is post-training or very short fine-tuning, to
    stay under 5 minutes; ``full`` runs post-training rows first (their results come in
    minutes), then the fine-tuned ones with the reference runs' budgets (hours)."""
    if task == "bible-es" and not full:
        return [
            (row_pruning, {"sparsity": 0.5, "steps": 60, "rounds": 1}),
            (row_kmeans, {"bits": 4, "steps": 0}),
            (row_deep_compression, {"sparsity": 0.5, "steps": 60, "rounds": 1, "share_steps": 0}),
            (row_binarization, {"steps": 40}),
            (row_ternary, {"steps": 60}),
            (row_uniform, {"bits": 8, "steps": 0}),
            (row_uniform, {"bits": 4, "steps": 0}),
            (row_binary_codes, {"q": 2, "steps": 60, "fit": "alternating"}),
            (row_head_pruning, {"fraction": 0.0}),
            (row_head_pruning, {"fraction": 0.25}),
        ]
    if task == "bible-es":
        return ([(row_kmeans, {"bits": b, "steps": 0}) for b in (8, 5, 4, 3, 2)]
                + [(row_uniform, {"bits": b, "steps": 0}) for b in (8, 6, 4)]
                + [(row_binary_codes, {"q": q, "steps": 0, "fit": fit}) for q in (2, 3, 4)
                   for fit in ("greedy", "alternating")]
                + [(row_uniform, {"bits": b, "steps": 0, "activations": True}) for b in (8, 6, 4)]
                + [(row_ternary, {"steps": 0})]
                + [(row_head_pruning, {"fraction": f}) for f in (0.0, 0.1, 0.25, 0.5)]
                + [(row_low_rank, {"rank": r}) for r in (64, 32)] + [(row_low_rank, {"rank": 32, "embedding_rank": 64})]
                + HESSIAN_PTQ + LAYERDROP_POST_HOC + FFN_POST_HOC + [(row_sharing, {"kind": k}) for k in SHARED]
                + [(row_uniform, {"bits": b, "steps": 400}) for b in (8, 6, 4)]
                + [(row_uniform, {"bits": b, "steps": 400, "activations": True}) for b in (8, 6, 4)]
                + [(row_kmeans, {"bits": b, "steps": 400}) for b in (4, 3)]
                + [(row_binary_codes, {"q": q, "steps": 1000, "fit": "alternating"}) for q in (1, 2, 3, 4)]
                + [(row_binary_codes, {"q": 2, "steps": 1000, "fit": "alternating", "emb_ratio": r}) for r in (0.0, 1.0)]
                + [(row_binary_codes, {"q": 2, "steps": 1000, "fit": "alternating", "staged": True})]
                + [(row_pruning, {"sparsity": 0.5, "steps": 1000, "rounds": 1}),
                   (row_pruning, {"sparsity": 0.8, "steps": 4000}),
                   (row_deep_compression, {"sparsity": 0.8, "steps": 4000, "share_steps": 400}),
                   (row_pruning, {"sparsity": 0.9, "steps": 4000}),
                   (row_binarization, {"steps": 2000}),
                   (row_ternary, {"steps": 2000})]
                + [(row_ternary, {"steps": 2000, "distill": d}) for d in ("outputs", "outputs+layers")]
                + [(row_head_pruning, {"fraction": f, "steps": 1000}) for f in (0.25, 0.5, 0.0)]
                + [(row_low_rank, {"rank": 32, "embedding_rank": e, "steps": 1000}) for e in (None, 64)]
                + HESSIAN_QAT + LAYERDROP_TRAINED + FFN_TRAINED
                + [(row_sharing, {"kind": k, "steps": 1000}) for k in SHARED])
    if not full:
        return [
            (row_pruning, {"sparsity": 0.8, "steps": 100}),
            (row_kmeans, {"bits": 4, "steps": 30}),
            (row_deep_compression, {"sparsity": 0.9, "bits": 3, "steps": 100, "share_steps": 30}),
            (row_binarization, {"steps": 60}),
            (row_ternary, {"steps": 60}),
            (row_uniform, {"bits": 8, "steps": 0}),
            (row_uniform, {"bits": 4, "steps": 40}),
            (row_binary_codes, {"q": 2, "steps": 60, "fit": "greedy"}),
            (row_head_pruning, {"fraction": 0.0}),
            (row_head_pruning, {"fraction": 0.25}),
        ]
    return ([(row_pruning, {"sparsity": s, "steps": 600}) for s in (0.5, 0.8, 0.9)]
            + [(row_kmeans, {"bits": b, "steps": 200}) for b in (8, 5, 4, 3, 2)]
            + [(row_deep_compression, {"steps": 600}),
               (row_deep_compression, {"sparsity": 0.9, "bits": 3, "steps": 600, "share_steps": 200}),
               (row_binarization, {"steps": 600}),
               (row_ternary, {"steps": 0}), (row_ternary, {"steps": 600})]
            + [(row_ternary, {"steps": 600, "distill": d}) for d in ("outputs", "outputs+layers")]
            + [(row_uniform, {"bits": b, "steps": 0}) for b in (8, 6, 4)]
            + [(row_uniform, {"bits": b, "steps": 400}) for b in (8, 6, 4)]
            + [(row_uniform, {"bits": b, "steps": s, "activations": True}) for s in (0, 400) for b in (8, 6, 4)]
            + [(row_binary_codes, {"q": q, "steps": 300, "fit": "alternating", "emb_ratio": r})
               for r in (8.0, 0.0) for q in (1, 2, 3, 4)]             # frequency-aware vs uniform embedding
            + [(row_binary_codes, {"q": 2, "steps": 300, "fit": "alternating", "emb_ratio": 8.0, "staged": True}),
               (row_binary_codes, {"q": 2, "steps": 300, "fit": "alternating", "emb_ratio": 1.0}),
               (row_binary_codes, {"q": 2, "steps": 300, "fit": "greedy", "emb_ratio": 8.0})]
            + [(row_head_pruning, {"fraction": 0.0})]
            + [(row_head_pruning, {"fraction": f, "steps": s}) for s in (0, 300) for f in (0.25, 0.5)]
            + [(row_low_rank, {"rank": 32, "embedding_rank": e, "steps": s}) for s in (0, 300) for e in (None, 64)]
            + HESSIAN_PTQ + FFN_POST_HOC + [(row_sharing, {"kind": k}) for k in SHARED]
            + HESSIAN_QAT + LAYERDROP_QUICK + LOTTERY_QUICK
            + [(row_ffn_pruning, {"fraction": 0.5, "steps": 300, "control": c}) for c in (False, True)]
            + SHARING_QUICK)


# Lottery tickets on the quick task (the shipped model's theta_0 and 12,000 steps are not here):
# 2, 4 and 7 rounds of 20% (64%, 41% and 21% of the matrices kept), the last two against the
# same masks from a fresh initialization.
LOTTERY_QUICK = ([(row_lottery, {"rounds": r}) for r in (2, 4, 7)]
                 + [(row_lottery, {"rounds": r, "reinit": True}) for r in (4, 7)])


# LayerDrop on the shipped model: Every Other post hoc (encoder, decoder, both), recovery by 1,000
# steps of fine-tuning after pruning, and LayerDrop during 1,000 steps of fine-tuning (fairseq's
# README: fine-tuning alone with it does not make a model robust to pruning), unpruned too; then
# the same 1+1 student distilled: DistilBERT's loss, soft targets alone, TinyBERT's (soft targets
# + every mapped hidden state and score matrix at T = 1) through its uniform and bottom maps.
LAYERDROP_POST_HOC = [(row_layerdrop, {"rate_enc": e, "rate_dec": d})
                      for e, d in ((0.5, 0.5), (0.5, 0.0), (0.0, 0.5))]
LAYERDROP_TRAINED = ([(row_layerdrop, {"after_steps": 1000})]
                     + [(row_layerdrop, {"rate_enc": r, "rate_dec": r, "train_p": 0.5, "steps": 1000})
                        for r in (0.5, 0.0)]
                     + [(row_distilled_student, {"steps": 1000}),   # DistilBERT's student of that depth
                        (row_distilled_student, {"steps": 1000, "alpha": 1.0, "gamma": 0.0})]
                     + [(row_distilled_student, {"steps": 1000, "alpha": 1.0, "temperature": 1.0, "gamma": 0.0,
                                                 "beta": 1.0, "layer_map": m}) for m in ("uniform", "bottom")])
# The quick task trains from scratch (its baseline's 400 steps, same seed) with LayerDrop at the
# paper's rate for pruning half (0.5) and at fairseq's default (0.2).
LAYERDROP_QUICK = ([(row_layerdrop, {}), (row_layerdrop, {"after_steps": 300})]
                   + [(row_layerdrop, {"rate_enc": r, "rate_dec": r, "train_p": p, "steps": 400, "scratch": True})
                      for p in (0.5, 0.2) for r in (0.5, 0.0)])

# Q-BERT in both --full plans: 3/4-bit PTQ with 0, 2 (the most sensitive, or the least: the
# control) and 4 layers at 4 bits, then 2/3-bit QAT both ways.
HESSIAN_PTQ = ([(row_hessian_mixed, {"n_high": 0}), (row_hessian_mixed, {"n_high": 4})]
               + [(row_hessian_mixed, {"n_high": 2, "order": o}) for o in ("hessian", "reverse")])
HESSIAN_QAT = [(row_hessian_mixed, {"low": 2, "high": 3, "n_high": 2, "order": o, "steps": 400})
               for o in ("hessian", "reverse")]


# FullyQT's FFN node pruning in both --full plans: the encoder's FFNs (the paper's claim) and all
# of them at fixed fractions by x_max, each against as many nodes chosen at random, and the
# lambda sigma rule; then, on the shipped model, 1,000 steps of fine-tuning after pruning.
FFN_POST_HOC = ([(row_ffn_pruning, {"fraction": f, "where": w, "control": c})
                 for w, fs in (("enc", (0.25, 0.5, 0.75)), ("all", (0.25, 0.5))) for f in fs for c in (False, True)]
                + [(row_ffn_pruning, {"lam": lam}) for lam in (4.0, 4.5)])
FFN_TRAINED = ([(row_ffn_pruning, {"fraction": 0.5, "steps": 1000, "control": c}) for c in (False, True)]
               + [(row_ffn_pruning, {"lam": 4.5, "steps": 1000})])


# ALBERT's cross-layer sharing, one set per stack (our stacks have 2 layers): every parameter of a
# layer, the FFNs only, the attention only. The shipped model is tied at its layer means, then
# fine-tuned; the quick task also trains shared models from scratch (ALBERT's protocol, the
# baseline's recipe).
SHARED = ("all", "ffn", "attention")
SHARING_QUICK = ([(row_sharing, {"kind": k, "steps": 300}) for k in SHARED]
                 + [(row_sharing, {"kind": k, "steps": 400, "scratch": True}) for k in SHARED])


def row_name(fn, kwargs) -> str:
    """A row's key in the JSON (resumed runs skip rows already measured)."""
    return fn.__name__[4:] + "(" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")"
