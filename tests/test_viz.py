"""Attention entropy and maps (tinyzip/viz.py).

Entropy per head as in Clark et al. (2019), "What Does BERT Look At?", arXiv:1906.04341:
H_q = -sum_k a_qk log a_qk in nats, averaged over real query rows; padded keys are dropped and
the row renormalised. Expected values come from the definition (uniform rows -> log n, one-hot
rows -> 0) and from a loop-by-loop reference written here.
"""
import math

import hypothesis.extra.numpy as hynp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@st.composite
def probs_and_masks_st(draw):
    """(probs (B, H, Tq, Tk) with rows summing to 1, key mask (B, Tk), query mask (B, Tq))."""
    B, H, Tq, Tk = (draw(st.integers(1, 3)) for _ in range(4))
    raw = draw(hynp.arrays(np.float64, (B, H, Tq, Tk), elements=st.floats(0.0, 1.0, allow_subnormal=False)))
    raw = raw + 1e-3
    keys = draw(hynp.arrays(bool, (B, Tk)))
    keys[:, 0] = True                                       # every sequence has a real token
    queries = draw(hynp.arrays(bool, (B, Tq)))
    queries[0, 0] = True
    return raw / raw.sum(-1, keepdims=True), keys, queries


def _entropy_reference(p, keys, queries):
    """Loop-by-loop H_q over real keys, averaged over real queries: (H,)."""
    B, H, Tq, Tk = p.shape
    out = []
    for h in range(H):
        values = []
        for b in range(B):
            for q in range(Tq):
                if not queries[b, q]:
                    continue
                row = [p[b, h, q, k] for k in range(Tk) if keys[b, k]]
                z = sum(row)
                values.append(-sum(a / z * math.log(a / z) for a in row if a > 0))
        out.append(sum(values) / len(values))
    return np.array(out)


@given(B=st.integers(1, 3), H=st.integers(1, 4), Tq=st.integers(1, 5), n=st.integers(1, 9))
def test_entropy_of_uniform_rows_is_log_n(B, H, Tq, n):
    p = np.full((B, H, Tq, n), 1.0 / n)
    np.testing.assert_allclose(viz.attention_entropy([p, p]), np.full((2, H), math.log(n)), atol=1e-12)


@given(B=st.integers(1, 3), H=st.integers(1, 4), Tq=st.integers(1, 5), Tk=st.integers(1, 9), seed=st.integers(0, 99))
def test_entropy_of_one_hot_rows_is_zero(B, H, Tq, Tk, seed):
    idx = np.random.default_rng(seed).integers(0, Tk, size=(B, H, Tq))
    p = np.zeros((B, H, Tq, Tk))
    np.put_along_axis(p, idx[..., None], 1.0, axis=-1)
    assert np.array_equal(viz.attention_entropy([p]), np.zeros((1, H)))


def test_masked_keys_are_ignored():
    """Uniform over all 6 keys, but only 4 are real: the entropy is log 4, not log 6."""
    p = np.full((2, 3, 5, 6), 1.0 / 6)
    keys = np.array([[True] * 4 + [False] * 2, [True] * 4 + [False] * 2])
    np.testing.assert_allclose(viz.attention_entropy([p], mask=keys), np.full((1, 3), math.log(4)))
    q = np.zeros_like(p)
    q[..., :4] = 0.25                                       # what a correctly masked softmax gives
    np.testing.assert_allclose(viz.attention_entropy([q]), viz.attention_entropy([q], mask=keys))


def test_padded_queries_are_ignored():
    p = np.full((1, 2, 3, 4), 0.25)
    p[0, :, 2] = [1.0, 0.0, 0.0, 0.0]                       # a padded query row with a peaked junk row
    queries = np.array([[True, True, False]])
    np.testing.assert_allclose(viz.attention_entropy([p], query_mask=queries), np.full((1, 2), math.log(4)))


@given(probs_and_masks_st())
def test_entropy_matches_loop_reference_and_bounds(data):
    p, keys, queries = data
    got = viz.attention_entropy([p], mask=keys, query_mask=queries)[0]
    np.testing.assert_allclose(got, _entropy_reference(p, keys, queries), rtol=1e-12, atol=1e-12)
    assert np.all(got >= -1e-12) and np.all(got <= math.log(keys.sum(1).max()) + 1e-12)


def test_entropy_accepts_5d_array_and_float32():
    p = np.full((3, 1, 2, 4, 5), 0.2, dtype=np.float32)
    out = viz.attention_entropy(p)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out, math.log(5), rtol=1e-6)


@pytest.mark.parametrize("probs, exc, message", [
    ([], TypeError, "non-empty list"),
    ([np.ones((2, 3, 4))], ValueError, r"\(B, H, Tq, Tk\)"),
    ([np.ones((1, 1, 2, 2), dtype=np.int64)], TypeError, "floating"),
    ([np.full((1, 1, 2, 2), np.nan)], ValueError, "finite"),
    ([np.full((1, 1, 2, 2), -0.5)], ValueError, "non-negative"),
    ([np.ones((1, 2, 2, 2)), np.ones((2, 2, 2, 2))], ValueError, "layer 1"),
    (np.ones((2, 2, 2, 2)), ValueError, r"\(L, B, H, Tq, Tk\)"),
])
def test_entropy_rejects_bad_probs(probs, exc, message):
    with pytest.raises(exc, match=message):
        viz.attention_entropy(probs)


def test_layers_of_a_head_pruned_model_may_have_different_head_counts():
    """Each layer's heads get their own entropy, NaN pads the narrower layers, a layer may have none."""
    rng = np.random.default_rng(5)
    layers = [rng.random((2, h, 3, 4)) for h in (4, 1, 0, 2)]
    layers = [x / x.sum(-1, keepdims=True) if x.size else x for x in layers]
    ent = viz.attention_entropy(layers)
    assert ent.shape == (4, 4)
    for i, x in enumerate(layers):
        h = x.shape[1]
        if h:
            np.testing.assert_allclose(ent[i, :h], viz.attention_entropy([x])[0], rtol=1e-12)
        assert np.all(np.isnan(ent[i, h:]))


def test_entropy_rejects_bad_masks():
    p = [np.full((2, 1, 3, 4), 0.25)]
    with pytest.raises(TypeError, match="bool"):
        viz.attention_entropy(p, mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        viz.attention_entropy(p, mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="no query rows"):
        viz.attention_entropy(p, query_mask=np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="real key"):
        viz.attention_entropy(p, mask=np.zeros((2, 4), bool))


# ---- terminal heatmap ------------------------------------------------------------------------

def test_heatmap_has_a_header_and_one_line_per_row():
    p = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    text = viz.terminal_heatmap(p, ["the", "cat", "a-very-long-row-label"], ["el", "gato", "x"])
    lines = text.split("\n")
    assert len(lines) == 1 + p.shape[0]
    assert lines[1].startswith("the ") and lines[2].startswith("cat ")
    assert lines[3].startswith("a-very-lo\u2026")                 # truncated to label_width=10
    cells = lines[1][11:]
    cell = len(cells) // 3
    assert cells == viz.SHADES[4] * cell + viz.SHADES[0] * cell * 2   # max -> full block, 0 -> blank
    assert "el" in lines[0] and "ga" in lines[0]


@given(rows=st.integers(1, 6), cols=st.integers(1, 300), width=st.integers(20, 120))
def test_heatmap_fits_the_width(rows, cols, width):
    p = np.random.default_rng(rows * cols).random((rows, cols))
    lines = viz.terminal_heatmap(p, [f"row{i}" for i in range(rows)], [f"w{j}" for j in range(cols)],
                                 width=width).split("\n")
    assert len(lines) == rows + 1
    assert all(len(line) <= width for line in lines)
    hidden = int(lines[0].rsplit(" +", 1)[1]) if " +" in lines[0] else 0
    shown = cols - hidden
    assert 1 <= shown <= cols
    cells = len(lines[1]) - 11
    assert cells % shown == 0 and 1 <= cells // shown <= 4


def test_heatmap_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        viz.terminal_heatmap(np.ones(3), ["a"], ["b"])
    with pytest.raises(ValueError, match="labels"):
        viz.terminal_heatmap(np.ones((2, 2)), ["a"], ["b", "c"])
    with pytest.raises(ValueError, match="finite"):
        viz.terminal_heatmap(np.array([[np.inf]]), ["a"], ["b"])
    with pytest.raises(ValueError, match="width"):
        viz.terminal_heatmap(np.ones((1, 1)), ["a"], ["b"], width=5)


# ---- files -----------------------------------------------------------------------------------

def _pair(rng, L=2, H=3, Tq=6, Tk=7):
    x = rng.random((L, 1, H, Tq, Tk))
    return list(x / x.sum(-1, keepdims=True)), ["el", "gato", "se", "sent\u00f3", "en", "la", "alfombra"], \
        ["<s>", "the", "cat", "sat", "on", "mats"]


def test_png_grid_is_written_with_matplotlib(tmp_path):
    probs, src, tgt = _pair(np.random.default_rng(0))
    path = viz.plot_attention_grid(probs, src, tgt, str(tmp_path / "attn.png"))
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100
    assert list(tmp_path.iterdir()) == [tmp_path / "attn.png"]         # no temp file left behind


def test_write_attention_maps_prefers_png(tmp_path):
    probs, src, tgt = _pair(np.random.default_rng(1))
    path = viz.write_attention_maps(probs, src, tgt, tmp_path / "maps.png")
    assert open(path, "rb").read(8) == PNG_MAGIC


def test_write_attention_maps_text_fallback(tmp_path, capsys):
    probs, src, tgt = _pair(np.random.default_rng(2), L=2, H=3)
    path = viz.write_attention_maps(probs, src, tgt, tmp_path / "maps.png", use_matplotlib=False, echo=True)
    assert path.endswith("maps.txt")
    text = open(path, encoding="utf-8").read()
    assert capsys.readouterr().out == text
    blocks = text.strip("\n").split("\n\n")
    assert len(blocks) == 2 * 3
    assert blocks[4].startswith("layer 1 head 1")
    assert all(len(b.split("\n")) == 1 + 1 + len(tgt) for b in blocks)    # title, header, rows


def test_maps_of_layers_with_different_head_counts(tmp_path):
    probs, src, tgt = _pair(np.random.default_rng(4), L=2, H=3)
    probs = [probs[0], probs[1][:, :1]]                                # layer 1 kept one head
    assert open(viz.plot_attention_grid(probs, src, tgt, str(tmp_path / "a.png")), "rb").read(8) == PNG_MAGIC
    text = open(viz.write_attention_maps(probs, src, tgt, tmp_path / "m.png", use_matplotlib=False),
                encoding="utf-8").read()
    assert [b.split("  ")[0] for b in text.strip("\n").split("\n\n")] == [
        "layer 0 head 0", "layer 0 head 1", "layer 0 head 2", "layer 1 head 0"]


def test_maps_crop_padding_to_the_token_lists(tmp_path):
    probs, src, tgt = _pair(np.random.default_rng(3))
    text = viz.attention_text(probs, src[:3], tgt[:2])
    assert len(text.strip("\n").split("\n\n")[0].split("\n")) == 1 + 1 + 2
    with pytest.raises(ValueError, match="Tk=7"):
        viz.attention_text(probs, src + ["extra"], tgt)
    with pytest.raises(ValueError, match="need 1..T"):
        viz.write_attention_maps(probs, [], tgt, tmp_path / "x.png", use_matplotlib=False)
