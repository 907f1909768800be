"""Attention maps and attention entropy, per layer and head, for one sentence pair.

The entropy of a head's attention rows is the diagnostic of Clark, Khandelwal, Levy and Manning
(2019), "What Does BERT Look At? An Analysis of BERT's Attention", BlackboxNLP, arXiv:1906.04341:
a head that looks at one token has entropy near 0, a head that spreads evenly over n tokens has
log(n). Compression papers use it to see whether quantization or pruning blurs attention.

Everything here works on plain arrays and token strings, not on a model: the model's forward with
``return_states=True`` gives one probability array per layer, and that list is the input.

Notation: L layers, B batch, H heads, Tq queries (rows), Tk keys (columns).
``probs_per_layer``: a list of L arrays, each ``(B, H, Tq, Tk)``, rows summing to 1 over real keys.
H may differ between layers (a head-pruned model, ``compress.head_pruning``; possibly 0): heads are
then numbered by their position in the layer, and the (L, H) outputs hold NaN where a layer has
fewer heads than the widest.
Labels: ``src_tokens`` name the keys (columns) and ``tgt_tokens`` the queries (rows), as in
decoder cross-attention; for encoder self-attention pass the source tokens as both.

    entropy of query row q:  H_q = -sum_k a_qk log a_qk      (nats, 0 log 0 = 0)

matplotlib (the optional ``plot`` extra) is imported only inside ``plot_attention_grid`` and drives
the Agg canvas directly, so no display and no global pyplot state are involved. Without it,
``write_attention_maps`` writes the same maps as unicode shade blocks to a text file.
"""
import os
import tempfile

import numpy as np

SHADES = " \u2591\u2592\u2593\u2588"  # ' ░▒▓█': 0, <1/4, <1/2, <3/4, up to the matrix maximum


def _as_layers(probs_per_layer):
    """Validate and return a list of float64 (B, H, Tq, Tk) arrays."""
    if isinstance(probs_per_layer, np.ndarray):
        if probs_per_layer.ndim != 5:
            raise ValueError(f"probs as one array must be (L, B, H, Tq, Tk), got shape {probs_per_layer.shape}")
        probs_per_layer = list(probs_per_layer)
    if not isinstance(probs_per_layer, (list, tuple)) or not probs_per_layer:
        raise TypeError("probs_per_layer must be a non-empty list of (B, H, Tq, Tk) arrays")
    layers = []
    for i, p in enumerate(probs_per_layer):
        p = np.asarray(p)
        if p.ndim != 4 or 0 in (p.shape[0], p.shape[2], p.shape[3]):
            raise ValueError(f"layer {i}: attention probs must be (B, H, Tq, Tk) with B, Tq, Tk > 0, got shape {p.shape}")
        if not np.issubdtype(p.dtype, np.floating):
            raise TypeError(f"layer {i}: attention probs must be floating point, got dtype {p.dtype}")
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ValueError(f"layer {i}: attention probs must be finite and non-negative")
        if layers and p.shape[0] != layers[0].shape[0]:
            raise ValueError(f"layer {i}: B = {p.shape[0]} differs from layer 0's {layers[0].shape[0]}")
        layers.append(p.astype(np.float64))
    return layers


def _bool_mask(mask, shape, name):
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"{name} must be a bool array (True = real token), got dtype {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {mask.shape}")
    return mask


def attention_entropy(probs_per_layer, mask=None, query_mask=None):
    """Mean entropy (nats) of each head's query rows: an (L, H) array (H: the widest layer's; NaN
    past a narrower layer's heads).

    ``mask``: bool (B, Tk), True for real (non-PAD) keys; padded keys are dropped and each row is
    renormalised over the real keys. ``query_mask``: bool (B, Tq), True for real queries; only
    those rows are averaged (default: all rows).
    """
    layers = _as_layers(probs_per_layer)
    out = np.full((len(layers), max(p.shape[1] for p in layers)), np.nan)  # (L, H)
    for i, p in enumerate(layers):
        B, H, Tq, Tk = p.shape
        keys = _bool_mask(mask, (B, Tk), "mask")
        queries = _bool_mask(query_mask, (B, Tq), "query_mask")
        if not queries.any():
            raise ValueError("query_mask selects no query rows")
        a = p * keys[:, None, None, :]                                     # (B, H, Tq, Tk)
        total = a.sum(-1, keepdims=True)                                   # (B, H, Tq, 1)
        live = queries[:, None, :, None] & (total > 0)                     # (B, H, Tq, 1)
        if not live[..., 0].any(axis=(0, 2)).all():
            raise ValueError(f"layer {i}: some head has no query row with probability on a real key")
        a = np.where(live, a / np.where(total > 0, total, 1.0), 0.0)
        # H_q = -sum_k a_qk log a_qk, with 0 log 0 = 0
        h = -(a * np.log(np.where(a > 0, a, 1.0))).sum(-1)                 # (B, H, Tq)
        rows = live[..., 0]                                                # (B, H, Tq)
        out[i, :H] = (h * rows).sum(axis=(0, 2)) / rows.sum(axis=(0, 2))   # (H,)
    return out


def _fit(label, width):
    label = str(label).replace("\n", " ")
    return label if len(label) <= width else label[: max(width - 1, 0)] + "\u2026"


def terminal_heatmap(probs_2d, row_labels, col_labels, *, width=80, label_width=10):
    """A text heatmap: a header of column labels, then one line per row of shade blocks.

    Shade = ``SHADES[ceil(4 * p / max(p))]`` (blank only for exact zeros). Each column is
    ``cell`` (1-4) characters wide, chosen so a line fits in ``width``; columns that still do not
    fit are cut and the header ends with "+N" saying how many. Row labels are truncated with an
    ellipsis, column labels to ``cell - 1`` characters (one when cells are one wide).
    """
    p = np.asarray(probs_2d, dtype=np.float64)
    if p.ndim != 2 or 0 in p.shape:
        raise ValueError(f"probs_2d must be a non-empty 2-D array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs_2d must be finite and non-negative")
    if len(row_labels) != p.shape[0] or len(col_labels) != p.shape[1]:
        raise ValueError(f"labels ({len(row_labels)} rows, {len(col_labels)} cols) do not match shape {p.shape}")
    if width < label_width + 10:
        raise ValueError(f"width {width} leaves no room for cells after label_width {label_width}")
    room = width - label_width - 1
    cell = int(min(4, max(1, room // p.shape[1])))
    n_cols = min(p.shape[1], room // cell)
    while n_cols > 1 and n_cols < p.shape[1] and n_cols * cell + len(f" +{p.shape[1] - n_cols}") > room:
        n_cols -= 1                                                        # keep room for "+N"
    more = p.shape[1] - n_cols
    top = p.max()
    levels = np.ceil(4 * p[:, :n_cols] / top).astype(int) if top > 0 else np.zeros((p.shape[0], n_cols), int)
    header = " " * label_width + " " + "".join(str(c).replace("\n", " ")[: max(cell - 1, 1)].ljust(cell)
                                               for c in col_labels[:n_cols])
    header = header.rstrip() + (f" +{more}" if more else "")
    lines = [header]
    for label, row in zip(row_labels, levels):
        lines.append(_fit(label, label_width).ljust(label_width) + " " + "".join(SHADES[k] * cell for k in row))
    return "\n".join(lines)


def _check_tokens(layers, src_tokens, tgt_tokens):
    """Return (Tq, Tk) to show: the token counts, which may be shorter than the padded arrays."""
    _, _, Tq, Tk = layers[0].shape
    if len(tgt_tokens) > Tq or len(src_tokens) > Tk or not src_tokens or not tgt_tokens:
        raise ValueError(f"{len(tgt_tokens)} query and {len(src_tokens)} key tokens for arrays with "
                         f"Tq={Tq}, Tk={Tk} (need 1..T each)")
    if any(p.shape[2:] != (Tq, Tk) for p in layers):
        raise ValueError("all layers must share (Tq, Tk) to be drawn on one grid")
    return len(tgt_tokens), len(src_tokens)


def attention_text(probs_per_layer, src_tokens, tgt_tokens, *, batch_index=0, width=80):
    """Every layer and head of one batch row as titled terminal heatmaps, one after another."""
    layers = _as_layers(probs_per_layer)
    Tq, Tk = _check_tokens(layers, src_tokens, tgt_tokens)
    blocks = []
    for i, p in enumerate(layers):
        for h in range(p.shape[1]):
            a = p[batch_index, h, :Tq, :Tk]                                # (Tq, Tk)
            ent = attention_entropy([a[None, None]])[0, 0]
            blocks.append(f"layer {i} head {h}  (mean entropy {ent:.3f} nats)\n"
                          + terminal_heatmap(a, tgt_tokens, src_tokens, width=width))
    return "\n\n".join(blocks) + "\n"


def _atomic_write(path, write):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def plot_attention_grid(probs_per_layer, src_tokens, tgt_tokens, path, *, batch_index=0, dpi=100):
    """Write a PNG grid of attention maps: one row per layer, one column per head. Needs matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = _as_layers(probs_per_layer)
    Tq, Tk = _check_tokens(layers, src_tokens, tgt_tokens)
    L, H = len(layers), max(1, max(p.shape[1] for p in layers))
    entropy = attention_entropy([p[batch_index:batch_index + 1, :, :Tq, :Tk] for p in layers])  # (L, H)
    cell = 0.25 + 0.18 * max(Tq, Tk)
    fig = Figure(figsize=(1.0 + cell * H, 0.6 + cell * L), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(L, H, squeeze=False)
    for i, p in enumerate(layers):
        for h in range(H):
            ax = axes[i, h]
            if h >= p.shape[1]:                                            # a layer with fewer heads
                ax.axis("off")
                continue
            ax.imshow(p[batch_index, h, :Tq, :Tk], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_title(f"L{i} H{h}  {entropy[i, h]:.2f} nats", fontsize=7)
            ax.set_xticks(range(Tk))
            ax.set_yticks(range(Tq))
            ax.set_xticklabels([_fit(t, 12) for t in src_tokens] if i == L - 1 else [], rotation=90, fontsize=6)
            ax.set_yticklabels([_fit(t, 12) for t in tgt_tokens] if h == 0 else [], fontsize=6)
    fig.tight_layout()
    _atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def write_attention_maps(probs_per_layer, src_tokens, tgt_tokens, path, *, use_matplotlib=None,
                         batch_index=0, echo=False):
    """PNG at ``path`` when matplotlib is importable, else the text maps at ``<path stem>.txt``.

    ``use_matplotlib``: None = decide by import, False = force the text fallback, True = require
    matplotlib. ``echo`` also prints the text maps. Returns the path written.
    """
    if use_matplotlib is None:
        try:
            import matplotlib  # noqa: F401
            use_matplotlib = True
        except ImportError:
            use_matplotlib = False
    if use_matplotlib:
        return plot_attention_grid(probs_per_layer, src_tokens, tgt_tokens, path, batch_index=batch_index)
    text = attention_text(probs_per_layer, src_tokens, tgt_tokens, batch_index=batch_index)
    out = os.path.splitext(os.fspath(path))[0] + ".txt"
    _atomic_write(out, lambda f: f.write(text.encode("utf-8")))
    if echo:
        print(text, end="")
    return out
