"""The rows of the demo table: one small function per method setting.

Each ``row_<method>(ctx, params, **settings)`` compresses the float32 baseline's ``params`` by
calling the method files in ``tinyzip/compress`` in pipeline order (fine-tuning through
:func:`finetune` where the setting asks for steps) and returns ``(name, bits, {param name:
PackedTensor})``, which ``report.run_demo`` writes to a ``.tz`` file and measures; a row that
changes the architecture (head pruning, LayerDrop) adds the new model's config as a fourth
element. Which rows a run has is ``plans.py``'s ``plan(task, full)``.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from tinyzip.compress import (binarization, chung, cross_layer_sharing, distillation, ffn_pruning, fqt, head_pruning,
                              hessian, huffman, kmeans, layerdrop, lottery, low_rank, magnitude_pruning, ternary,
                              uniform)
from tinyzip.compress.base import IDENTITY, Method
from tinyzip.compressed import is_embedding, pack_float
from tinyzip.data import make_batches
from tinyzip.nn.optim import adam
from tinyzip.train import train


@dataclass
class Context:
    """What every row needs: the baseline, data for fine-tuning and for evaluation."""

    translator: object              # the float32 baseline Translator
    train_ids: list                 # encoded training pairs, for short fine-tuning
    test_pairs: list                # (src, ref) texts the table is measured on
    out_dir: str
    preset: object
    seed: int
    float_bytes: int = 0
    baseline_bleu: float = 0.0
    log: object = None
    pruned: dict = field(default_factory=dict)   # (sparsity, steps) -> pruned params, shared by rows
    sensitivities: dict = field(default_factory=dict)  # Q-BERT's Omega per layer, shared by rows
    layerdrop: dict = field(default_factory=dict)      # (p, steps, scratch) -> LayerDrop-trained params
    checkpoint_dir: str | None = None            # fine-tuning checkpoints (resumable runs)
    beam: int = 1                                # > 1: also measure BLEU with beam search


def finetune_peak_lr(preset) -> float:
    """Fine-tuning continues training: the preset's lr at its last step, at most half its peak."""
    return min(0.5 * preset.peak_lr, preset.schedule(preset.steps))


def finetune(ctx: Context, params: dict, method: Method, steps: int, tag: str, model=None) -> dict:
    """``steps`` of training through ``method`` (lr: :func:`finetune_peak_lr`, warmup steps/10), on
    ``model``'s loss (default: the baseline's model, i.e. its cross-entropy; a ``Distiller`` for
    distillation).

    With ``ctx.checkpoint_dir`` the run checkpoints as ``<tag>.ckpt.npz`` every 50 steps and a
    rerun resumes there (a finished one returns its params at once). The method is rebuilt by
    the caller from the same inputs, so its state (masks, assignments) is the same on resume."""
    if steps <= 0:
        return params
    model, preset = model or ctx.translator.model, ctx.preset
    peak, warmup = finetune_peak_lr(preset), max(steps // 10, 1)

    def batches(epoch):
        return make_batches(ctx.train_ids, preset.max_tokens, np.random.default_rng([ctx.seed, 99, epoch]))

    ckpt = None if ctx.checkpoint_dir is None else os.path.join(ctx.checkpoint_dir, f"{tag}.ckpt.npz")
    if ctx.log is not None:
        print(f"fine-tuning {tag}: {steps} steps", file=ctx.log)
    result = train(model, params, batches, steps=steps, optimizer=adam(), rng=np.random.default_rng(ctx.seed),
                   schedule=lambda s: peak * min(1.0, s / warmup), method=method, log=ctx.log,
                   checkpoint_path=ckpt, checkpoint_every=50 if ckpt else 0,
                   resume=ckpt is not None and os.path.exists(ckpt))
    if result.interrupted:
        raise KeyboardInterrupt
    return result.params


def pack_model(params: dict, pack_matrix, names) -> dict:
    """``pack_matrix(name, W)`` for the named matrices, float32 for everything else (biases, LN)."""
    return {n: pack_matrix(n, W) if n in names else pack_float(W) for n, W in params.items()}


def matrices(params: dict) -> list:
    """Every 2-D parameter: the attention, FFN and (shared) embedding/output matrices."""
    return [n for n, W in params.items() if W.ndim == 2]


# ---- one function per row ---------------------------------------------------------------------

def pruned_model(ctx, params, sparsity, steps, rounds=4):
    """Zhu & Gupta gradual magnitude pruning to ``sparsity`` in ``rounds`` rounds, retrained in
    between. Memoized in ``ctx``, so the Deep Compression row builds on the pruning row's model."""
    key = (sparsity, steps, rounds)
    if key not in ctx.pruned:
        names, masks = magnitude_pruning.prunable_names(params), None
        for r, target in enumerate(magnitude_pruning.iterative_targets(sparsity, rounds)):
            params, masks = magnitude_pruning.prune_params(params, target, names=names, masks=masks)
            params = finetune(ctx, params, magnitude_pruning.pruning_method(masks), steps // rounds,
                              f"prune{int(sparsity * 100)}-{steps}x{rounds}-round{r}")
        ctx.pruned[key] = params
    return ctx.pruned[key]


def row_pruning(ctx, params, sparsity=0.8, steps=300, rounds=4):
    """Gradual magnitude pruning, exported in Deep Compression's sparse format (CSC kernel at run time)."""
    params = pruned_model(ctx, params, sparsity, steps, rounds)
    names = magnitude_pruning.prunable_names(params)
    packed = pack_model(params, lambda n, W: magnitude_pruning.pack_sparse(W), names)
    return f"magnitude_pruning-{int(sparsity * 100)}", None, packed


def row_kmeans(ctx, params, bits=4, steps=100):
    """Deep Compression weight sharing: k = 2^bits centroids per matrix, centroids fine-tuned (Eq. 3)."""
    names = matrices(params)
    params, method = kmeans.kmeans_method(params, names, 1 << bits)
    params = finetune(ctx, params, method, steps, f"kmeans{bits}-{steps}")
    packed = pack_model(params, lambda n, W: kmeans.pack_kmeans(W, 1 << bits), names)
    return f"kmeans-{bits}bit", bits, packed


def row_deep_compression(ctx, params, sparsity=0.8, bits=4, steps=300, share_steps=100, gap_bits=4, rounds=4):
    """Prune -> share (k = 2^bits - 1 plus the zero slot) -> Huffman: the full Deep Compression pipeline."""
    pruned = pruned_model(ctx, params, sparsity, steps, rounds)
    names = magnitude_pruning.prunable_names(pruned)
    k = (1 << bits) - 1
    shared, method = kmeans.kmeans_method(pruned, names, k)
    shared = finetune(ctx, shared, method, share_steps, f"dc{int(sparsity * 100)}-{steps}x{rounds}-{bits}-{share_steps}")

    def pack(name, W):
        return huffman.pack_kmeans_huffman(kmeans.pack_kmeans(W, k, gap_bits=gap_bits))

    packed = pack_model(shared, pack, names)
    others = [n for n in matrices(shared) if n not in names]      # e.g. the embedding: shared, not pruned
    packed.update({n: kmeans.pack_kmeans(shared[n], 1 << bits) for n in others})
    return f"magnitude_pruning-{int(sparsity * 100)}+kmeans+huffman", bits, packed


def row_binarization(ctx, params, steps=300):
    """BinaryNet signs with XNOR per-output scales, latent weights trained through the clipped STE."""
    names = [n for n in matrices(params) if n != "emb"]            # the lookup table stays float
    method = binarization.binarization_method(names)
    latent = binarization.clip_latent(params, names)
    latent = finetune(ctx, latent, method, steps, f"binarization-{steps}")
    packed = pack_model(latent, lambda n, W: binarization.pack_binary(W), names)
    return "binarization", 1, packed


def row_ternary(ctx, params, steps=60, distill=None):
    """TernaryBERT's TWN: one alpha per Linear matrix, one per token row of the embedding, latent
    weights clipped to [-2.5, 2.5] in the forward, trained through the STE on the task's
    cross-entropy, or (``distill``) against the float baseline as teacher, the student starting
    from it (``distillation.Distiller``): "outputs" = Hinton's soft targets at T = 1 alone,
    "outputs+layers" = TernaryBERT's loss, plus the hidden-state and attention-score MSEs. Runs on
    BiQGEMM as a 2-bit binary code (the embedding, a lookup, is dequantized)."""
    if distill not in (None, "outputs", "outputs+layers"):
        raise ValueError(f"distill must be None, 'outputs' or 'outputs+layers', got {distill!r}")
    granularities = {n: "row" if is_embedding(n) else "tensor" for n in matrices(params)}
    teacher = None if distill is None else distillation.Distiller(
        ctx.translator.model, ctx.translator.params, beta=1.0 if distill == "outputs+layers" else 0.0)
    name = "ternary" if distill is None else f"ternary-distilled-{distill}"
    params = finetune(ctx, params, ternary.ternary_method(granularities), steps, f"{name}-{steps}", model=teacher)
    packed = pack_model(params, lambda n, W: ternary.pack_ternary(W, granularities[n]), granularities)
    return name, 2, packed


def row_head_pruning(ctx, params, fraction=0.25, steps=0, examples=200):
    """Michel et al.'s iterative pruning (H4) of ``fraction`` of all attention heads, importance
    (H2)-(H3) from ``examples`` training pairs (one per batch); the heads are then removed (a
    smaller model, its config in the file), and ``steps`` of plain fine-tuning follow (the paper
    prunes post hoc: 0). Stored as float16: the shipped model's weights are float16 values, so
    that is lossless for it, and a float32 file would be DEFLATEd by the container to about the
    same size through their zero low mantissa bits, a saving no more the pruning's than this."""
    model = ctx.translator.model
    pick = np.random.default_rng([ctx.seed, 7]).choice(len(ctx.train_ids), examples, replace=False)
    batches = [next(iter(make_batches([ctx.train_ids[i]], 10 ** 9, shuffle=False))) for i in pick]
    n_masked = round(fraction * head_pruning.n_heads(model))
    mask = head_pruning.iterative_masks(model, params, batches, n_masked)[-1] if n_masked else None
    model, params = head_pruning.prune_heads(model, params, mask)
    params = finetune(ctx, params, IDENTITY, steps, f"heads{int(fraction * 100)}-{steps}", model=model)
    packed = {n: pack_float(W, np.float16) for n, W in params.items()}
    name = f"head_pruning-{int(fraction * 100)}+float16" if n_masked else "float16"  # 0: the storage alone
    return name, 16, packed, model.config


def row_ffn_pruning(ctx, params, fraction=None, lam=None, where="all", control=False, steps=0, batches=8):
    """FullyQT's node pruning: x_max (P1) of every FFN node ``where`` ("enc" or "all") over
    ``batches`` training batches, then the nodes below lam * sigma (P3) or, with ``fraction``, that
    fraction of each FFN's nodes of least x_max (``control``: as many chosen at random); the nodes
    are removed (P4), ``steps`` of plain fine-tuning follow. Stored as float16, like the head-pruning
    rows (the float16 row is the reference)."""
    if (fraction is None) == (lam is None) or where not in ("enc", "all"):
        raise ValueError(f"give one of fraction and lam, and where 'enc' or 'all'; got {fraction}, {lam}, {where!r}")
    model = ctx.translator.model
    prefixes = [p for p in model.config.ffn_prefixes() if where == "all" or p.startswith("enc.")]
    stream = make_batches(ctx.train_ids, ctx.preset.max_tokens, np.random.default_rng([ctx.seed, 95]))
    x_max = ffn_pruning.node_ranges(model, params, [b for _, b in zip(range(batches), stream)], prefixes)
    nodes = ffn_pruning.threshold_nodes(x_max, lam) if lam is not None else ffn_pruning.smallest_nodes(x_max, fraction)
    if control:
        nodes = ffn_pruning.random_nodes(nodes, x_max, np.random.default_rng([ctx.seed, 94]))
    model, params = ffn_pruning.prune_nodes(model, params, nodes)
    setting = f"{where}{'-random' if control else ''}-" + (f"{fraction:g}" if lam is None else f"lambda{lam:g}")
    params = finetune(ctx, params, IDENTITY, steps, f"ffn-{setting}-{steps}", model=model)
    if ctx.log is not None:
        print(f"ffn_pruning {setting}: removed " + ", ".join(f"{p} {len(n)}" for p, n in nodes.items())
              + f"; {100 * ffn_pruning.kept_fraction(model.config):.1f}% of all FFN nodes kept", file=ctx.log)
    return f"ffn_pruning-{setting}+float16", 16, {n: pack_float(W, np.float16) for n, W in params.items()}, model.config


def row_low_rank(ctx, params, rank=32, embedding_rank=None, steps=0):
    """Truncated SVD (R1)-(R3) of every attention and FFN matrix at ``rank``, and of the tied
    embedding at ``embedding_rank`` (ALBERT's factorization, (R5); None: it stays a plain matrix); ``steps``
    of fine-tuning train the factors (``FactorMethod``). Everything is stored as float16 (see
    :func:`row_head_pruning`: the shipped weights are float16 values, and float32 copies of them
    would DEFLATE to about that size), so the row compares with the ``float16`` row."""
    ranks = {n: min(rank, *params[n].shape) for n in matrices(params) if n != "emb"}
    if embedding_rank is not None:
        ranks["emb"] = embedding_rank
    method = low_rank.FactorMethod(ranks)
    factors = finetune(ctx, method.factorize(params), method, steps, f"lowrank{rank}-{embedding_rank}-{steps}")
    packed = {n: pack_float(W, np.float16) for n, W in factors.items() if not n.endswith(("@A", "@B"))}
    packed.update({n: low_rank.pack_low_rank(factors[n + "@A"], factors[n + "@B"], np.float16) for n in ranks})
    name = f"low_rank-{rank}" + ("" if embedding_rank is None else f"+emb{embedding_rank}") + "+float16"
    return name, 16, packed


def row_sharing(ctx, params, kind="all", groups=1, steps=0, scratch=False):
    """ALBERT's cross-layer sharing (S1)-(S3) of ``kind`` with ``groups`` sets per stack: the
    baseline's layers tied at their group mean (S4) and fine-tuned ``steps``, or with ``scratch``
    a shared model trained with the baseline's recipe from its initialization (each set the first
    layer's initial values; ALBERT's protocol). Each set stored once as float16, every other layer
    a reference to it (the float16 row is the reference)."""
    model = ctx.translator.model
    method = cross_layer_sharing.SharingMethod(
        cross_layer_sharing.owners(model.config, {"enc": groups, "dec": groups}, kind, params))
    tag = f"sharing-{kind}-{groups}-{steps}{'-scratch' if scratch else ''}"
    if scratch:
        rng = np.random.default_rng(ctx.seed)              # the baseline's seed: its initialization
        stored = train_like_baseline(ctx, method.tie(model.init_params(rng), "first"), tag, method=method,
                                     rng=rng, steps=steps)
    else:
        stored = finetune(ctx, method.tie(params, "mean"), method, steps, tag)
    packed = {n: pack_float(W, np.float16) for n, W in stored.items()}
    packed.update({n: cross_layer_sharing.pack_shared(o, params[n].shape) for n, o in method.owner_of.items()})
    return f"albert_sharing-{kind}-{groups}group{'-scratch' if scratch else ''}+float16", 16, packed


def layer_sensitivities(ctx, params, batches=3, batch_tokens=600) -> dict:
    """Q-BERT's (Q1)-(Q3) for every layer of the baseline, on ``batches`` training batches of
    ``batch_tokens`` tokens; memoized in ``ctx`` (one Hessian run for every mixed-precision row)."""
    key = (batches, batch_tokens)
    if key not in ctx.sensitivities:
        stream = make_batches(ctx.train_ids, batch_tokens, np.random.default_rng([ctx.seed, 97]))
        data = [batch for _, batch in zip(range(batches), stream)]
        ctx.sensitivities[key] = hessian.block_sensitivities(ctx.translator.model, params, data,
                                                             np.random.default_rng([ctx.seed, 96]))
        if ctx.log is not None:
            for block, s in ctx.sensitivities[key].items():
                lams = ", ".join(f"{lam:.3g}" for lam in s["eigenvalues"])
                print(f"hessian {block}: top eigenvalues {lams}; Omega {s['omega']:.3g}", file=ctx.log)
    return ctx.sensitivities[key]


def row_hessian_mixed(ctx, params, low=3, high=4, n_high=2, order="hessian", steps=0):
    """Q-BERT: the ``n_high`` layers of largest Omega (``order="hessian"``, (Q4)) or of smallest
    (``"reverse"``, the control) at ``high`` bits, the others at ``low``, the embedding at 8;
    symmetric per-channel uniform weights, PTQ (``steps`` = 0) or QAT. Bits: the weights' mean."""
    if order not in ("hessian", "reverse"):
        raise ValueError(f"order must be 'hessian' or 'reverse', got {order!r}")
    omega = {b: s["omega"] for b, s in layer_sensitivities(ctx, params).items()}
    if order == "reverse":
        omega = {b: -o for b, o in omega.items()}
    widths = hessian.bits_by_name(params, hessian.assign_bits(omega, n_high, low, high))
    params = finetune(ctx, params, hessian.mixed_precision_method(widths), steps,
                      f"hessian{low}-{high}x{n_high}-{order}-{steps}")
    packed = pack_model(params, lambda n, W: uniform.pack_uniform(W, widths[n]), widths)
    name = f"hessian_mixed-{low}/{high}bit-{n_high}high" + ("" if n_high in (0, len(omega)) else f"-{order}")
    return name, round(hessian.average_bits(params, widths), 2), packed


def train_like_baseline(ctx, params, tag, *, model=None, method=IDENTITY, rng=None, steps=None):
    """The baseline's recipe from ``params``: its batches, schedule and (unless ``steps``) step
    count, on ``model``'s loss (default the baseline's) through ``method``, dropout drawn from
    ``rng`` (default a stream of its own); checkpointed as ``<tag>.ckpt.npz`` like :func:`finetune`."""
    steps = ctx.preset.steps if steps is None else steps
    ckpt = None if ctx.checkpoint_dir is None else os.path.join(ctx.checkpoint_dir, f"{tag}.ckpt.npz")
    if ctx.log is not None:
        print(f"training {tag}: {steps} steps", file=ctx.log)
    result = train(model or ctx.translator.model, params,
                   lambda epoch: make_batches(ctx.train_ids, ctx.preset.max_tokens,
                                              np.random.default_rng([ctx.seed, epoch])),
                   steps=steps, optimizer=adam(), schedule=ctx.preset.schedule,
                   rng=np.random.default_rng([ctx.seed, 1]) if rng is None else rng, method=method,
                   log=ctx.log, checkpoint_path=ckpt, checkpoint_every=50 if ckpt else 0,
                   resume=ckpt is not None and os.path.exists(ckpt))
    if result.interrupted:
        raise KeyboardInterrupt
    return result.params


def layerdrop_model(ctx, params, p, steps, scratch):
    """The baseline after ``steps`` of LayerDrop (D1) at rate ``p`` in both stacks: fine-tuning
    (:func:`finetune`), or with ``scratch`` a new model trained from the baseline's initialization
    with the preset's schedule (the paper's protocol: the baseline's own recipe plus LayerDrop).
    Memoized in ``ctx``, so every pruning of one trained model shares it."""
    key = (p, steps, scratch)
    if key not in ctx.layerdrop:
        model = layerdrop.LayerDrop(ctx.translator.model, p, p)
        tag = f"layerdrop{p:g}-{steps}{'-scratch' if scratch else ''}"
        if not scratch:
            ctx.layerdrop[key] = finetune(ctx, params, IDENTITY, steps, tag, model=model)
        else:
            rng = np.random.default_rng(ctx.seed)       # the baseline's seed: its initialization
            init = ctx.translator.model.init_params(rng)
            ctx.layerdrop[key] = train_like_baseline(ctx, init, tag, model=model, rng=rng, steps=steps)
    return ctx.layerdrop[key]


def row_layerdrop(ctx, params, rate_enc=0.5, rate_dec=0.5, train_p=0.0, steps=0, scratch=False, after_steps=0):
    """LayerDrop: the model (after ``steps`` of LayerDrop at ``train_p``, see :func:`layerdrop_model`;
    0: the baseline itself) pruned Every Other (D3) at ``rate_enc`` / ``rate_dec`` into a smaller
    model (D4), then ``after_steps`` of plain fine-tuning; stored as float16 like the head-pruning
    rows (the float16 row is the reference)."""
    if train_p:
        params = layerdrop_model(ctx, params, train_p, steps, scratch)
    model, params = layerdrop.prune_every_other(ctx.translator.model, params, rate_enc, rate_dec)
    params = finetune(ctx, params, IDENTITY, after_steps,
                      f"layerdrop{train_p:g}-{steps}{'-scratch' if scratch else ''}-prune{rate_enc:g}-{rate_dec:g}"
                      f"-{after_steps}", model=model)
    c = model.config
    trained = "" if not train_p else f"-p{train_p:g}" + ("-scratch" if scratch else "")
    name = f"layerdrop{trained}-{c.enc_layers}+{c.dec_layers}layers+float16"
    return name, 16, {n: pack_float(W, np.float16) for n, W in params.items()}, c


def row_lottery(ctx, params, rounds=4, reinit=False):
    """Frankle & Carbin: ``rounds`` rounds of global 20% pruning, each ticket reset to theta_0 and
    retrained with the baseline's own recipe (L1)-(L3); with ``reinit`` the last round's mask
    trained from a fresh initialization instead (L4). Only for a baseline trained here from
    ``init_params(default_rng(seed))`` (the quick tasks), whose theta_0 that is; each round is
    checkpointed, so the rows of one plan share their rounds. Stored sparse, like pruning rows."""
    model = ctx.translator.model
    theta_0 = model.init_params(np.random.default_rng(ctx.seed))
    round_tags = iter(range(1, rounds + 1))                   # lottery_tickets trains rounds 1, 2, ... in order

    def train_ticket(ticket, masks):
        return train_like_baseline(ctx, ticket, f"lottery-round{next(round_tags)}",
                                   method=magnitude_pruning.pruning_method(masks))

    levels = lottery.lottery_tickets(train_ticket, theta_0, params, rounds)
    masks, trained = levels[-1]
    if reinit:
        fresh = model.init_params(np.random.default_rng([ctx.seed, 7]))
        # Eq. (L4): the ticket's mask, other initial values
        trained = train_like_baseline(ctx, lottery.reset_to(fresh, masks), f"lottery-reinit{rounds}",
                                      method=magnitude_pruning.pruning_method(masks))
    packed = pack_model(trained, lambda n, W: magnitude_pruning.pack_sparse(W), masks)
    kept = round(100 * lottery.kept_fraction(masks), 1)
    return f"lottery-{'reinit' if reinit else 'ticket'}-{kept:g}%kept", None, packed


def row_distilled_student(ctx, params, steps=1000, alpha=5 / 7, temperature=2.0, gamma=1 / 7, beta=0.0,
                          layer_map=None):
    """DistilBERT: a student of half the layers, initialized with one teacher layer out of two
    (``layerdrop.prune_every_other`` at 1/2: layers 0, 2, ...), trained ``steps`` against the float
    baseline as teacher on alpha L_soft + (1 - alpha) L_hard + gamma L_cos at ``temperature``
    (the defaults: DistilBERT's 5 : 2 : 1 at T = 2), plus beta L_trm through TinyBERT's
    ``layer_map`` (K7). float16 like the LayerDrop rows, whose ``after_steps`` row is the same
    student trained on the plain loss."""
    teacher = ctx.translator
    model, student = layerdrop.prune_every_other(teacher.model, params, 0.5, 0.5)
    distiller = distillation.Distiller(model, teacher.params, alpha=alpha, temperature=temperature, beta=beta,
                                       gamma=gamma, teacher_model=teacher.model, layer_map=layer_map)
    tag = f"student-{alpha:.3g}-{temperature:g}-{gamma:.3g}-{steps}" + (f"-{beta:g}-{layer_map}" if beta else "")
    student = finetune(ctx, student, IDENTITY, steps, tag, model=distiller)
    c = model.config
    loss = f"-tinybert-{layer_map}" if beta else "-soft" if alpha == 1 and gamma == 0 else ""
    name = f"distilled-{c.enc_layers}+{c.dec_layers}layers{loss}+float16"
    return name, 16, {n: pack_float(W, np.float16) for n, W in student.items()}, c


def row_uniform(ctx, params, bits=8, steps=0, activations=False, calib_batches=8):
    """Per-channel symmetric uniform weights (Jacob 2018 / FQT); PTQ when steps = 0, else QAT.

    ``activations``: weights+activations (FQT placement, ``fqt.activation_points``: every matmul
    input, Q, K, V and softmax outputs included): PTQ calibrates the EMA of min/max of each point
    on ``calib_batches`` training batches; QAT fake-quantizes them with EMA ranges while it trains
    (a run resumed after its last step has no ranges: they are then re-estimated the same way on
    the calibration batches, weights frozen). The frozen (S, Z) go into the file
    (``fqt.attach_act_ranges``): the int8 kernel quantizes the Linear inputs with them, and
    Q, K, V, P are fake-quantized with theirs (``compressed.static_act_hooks``)."""
    names, model = matrices(params), ctx.translator.model
    tag = f"uniform{'-wa' if activations else ''}{bits}-{steps}"

    def calibrate(eff, hooks, mode):
        fqt.set_act_mode(hooks, mode)
        batches = make_batches(ctx.train_ids, ctx.preset.max_tokens, np.random.default_rng([ctx.seed, 98]))
        for _, (src, tgt_in, _) in zip(range(calib_batches), batches):
            model.forward(eff, src, tgt_in, act_hooks=hooks)

    hooks = {}
    if steps:
        method = fqt.qat_method(params, bits, weights_only=not activations)
        params = finetune(ctx, params, method, steps, tag)
        hooks = method.act_hooks
        if any(h[0].__self__.range is None for h in hooks.values()):
            calibrate(method.forward(params)[0], hooks, "ema")
        fqt.set_act_mode(hooks, "frozen")
    elif activations:
        _, hooks, _ = fqt.ptq(params, lambda eff, h: calibrate(eff, h, "calibrate"), bits, calibration="ema")
    packed = fqt.attach_act_ranges(pack_model(params, lambda n, W: uniform.pack_uniform(W, bits), names), hooks)
    return f"uniform-{'qat' if steps else 'ptq'}{'-w+a' if activations else ''}-{bits}bit", bits, packed


def row_binary_codes(ctx, params, q=2, steps=300, fit="alternating", emb_ratio=8.0, staged=False):
    """Chung et al. 2020: every matrix in ``q``-bit binary codes (``fit``: Guo et al. greedy or
    Xu et al. alternating), float16 alphas; the embedding with frequency-aware widths (Algorithm 1,
    b = 4, r = ``emb_ratio``; r = 8 averages 1.14 bits per row; r = 0: every row q bits, the
    uniform baseline); QAT through the STE, optionally in the paper's three stages (embedding,
    decoder, encoder), each ``steps / 3``. Runs on BiQGEMM."""
    bits = chung.ChungBits(emb_max_bits=q if emb_ratio == 0 else 4, emb_ratio=emb_ratio,
                           enc_attn=q, enc_ffn=q, dec_self_attn=q, cross_attn=q, dec_ffn=q, out=q)
    freqs = chung.token_frequencies(ctx.train_ids, ctx.translator.model.config.src_vocab)
    stages = chung.staged_blocks(params) if staged else [None]
    for s in range(len(stages)):
        names = None if not staged else {n for block in stages[:s + 1] for n in block}
        method = chung.chung_method(params, bits, freqs, names=names, method=fit, alpha_dtype=np.float16)
        params = finetune(ctx, params, method, steps // len(stages),
                          f"binary_codes{q}-{fit}-r{emb_ratio:g}-{steps}{'-staged' if staged else ''}-stage{s}")
    packed = chung.chung_pack(params, bits, freqs, method=fit, alpha_dtype=np.float16)
    packed.update({n: pack_float(W) for n, W in params.items() if n not in packed})
    return f"binary_codes-{q}bit-{fit}{'-staged' if staged else ''}", q, packed
