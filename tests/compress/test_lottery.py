"""compress/lottery.py: Frankle & Carbin (2019), arXiv:1803.03635, iterative magnitude pruning with
resetting. Labels (L1)-(L4) are the module docstring's."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyzip.compress import lottery as lt
from tinyzip.compress import magnitude_pruning as mp
from tinyzip.nn.optim import adam
from tinyzip.nn.transformer import Seq2Seq, Seq2SeqConfig
from tinyzip.train import train

SRC = np.array([[4, 5, 6, 7, 2, 0], [6, 3, 8, 2, 0, 0]])
TGT_IN = np.array([[1, 4, 5, 6, 7], [1, 6, 8, 0, 0]])
TGT_OUT = np.array([[4, 5, 6, 7, 2], [6, 8, 2, 0, 0]])


def weights(seed, shapes=((4, 5), (3, 3), (6, 2))):
    """Matrices with distinct magnitudes (no ties), so the pruned set is unique."""
    rng = np.random.default_rng(seed)
    sizes = [a * b for a, b in shapes]
    magnitudes = rng.permutation(np.arange(1, sum(sizes) + 1)) / 7.0
    signs = rng.choice([-1.0, 1.0], sum(sizes))
    flat, out, start = magnitudes * signs, {}, 0
    for i, (shape, size) in enumerate(zip(shapes, sizes)):
        out[f"w{i}"] = flat[start:start + size].reshape(shape)
        start += size
    return out


def ones(ws):
    return {n: np.ones(W.shape, dtype=bool) for n, W in ws.items()}


# ---- (L1)-(L2): one round ------------------------------------------------------------------------

@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([0.1, 0.2, 0.5, 0.9]), st.integers(1, 6))
def test_l1_each_global_round_prunes_ceil_p_of_the_survivors_and_masks_nest(seed, p, rounds):
    masks = ones(weights(seed))
    for r in range(rounds):
        trained = weights(seed + r + 1)                        # new trained weights every round
        survivors = sum(int(m.sum()) for m in masks.values())
        new = lt.imp_masks(trained, masks, p)
        assert sum(int(m.sum()) for m in new.values()) == survivors - math.ceil(p * survivors)
        assert all(not np.any(new[n] & ~masks[n]) for n in masks)   # (L2): m_{r+1} <= m_r
        masks = new


@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([0.2, 0.5]))
def test_l1_global_round_removes_the_smallest_survivors_by_brute_force(seed, p):
    """Of the survivors, every pruned weight is smaller in |theta_T| than every kept one."""
    first = lt.imp_masks(weights(seed), ones(weights(seed)), 0.3)
    trained = weights(seed + 1)
    new = lt.imp_masks(trained, first, p)
    removed = np.concatenate([np.abs(trained[n])[first[n] & ~new[n]] for n in trained])
    kept = np.concatenate([np.abs(trained[n])[new[n]] for n in trained])
    assert removed.size == math.ceil(p * sum(int(m.sum()) for m in first.values()))
    assert removed.max() < kept.min()


@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 5))
def test_l1_layer_wise_prunes_ceil_p_of_each_matrix_and_is_global_on_one_matrix(seed, rounds):
    ws = weights(seed)
    masks = ones(ws)
    for r in range(rounds):
        new = lt.imp_masks(weights(seed + r + 1), masks, 0.3, scope="layer")
        for n in ws:
            survivors = int(masks[n].sum())
            assert int(new[n].sum()) == survivors - math.ceil(0.3 * survivors)
            assert not np.any(new[n] & ~masks[n])
        masks = new
    single = {"w0": ws["w0"]}
    assert np.array_equal(lt.imp_masks(single, ones(single), 0.3, scope="layer")["w0"],
                          lt.imp_masks(single, ones(single), 0.3, scope="global")["w0"])


@given(st.integers(0, 2 ** 32 - 1))
def test_l1_global_ignores_the_order_of_matrices_and_feels_a_rescaled_one(seed):
    """Pooled magnitudes: listing the matrices in another order changes nothing, but scaling one
    matrix by 100 moves the pruning onto the others; layer-wise pruning does not notice."""
    ws = weights(seed)
    forward = lt.imp_masks(ws, ones(ws), 0.3)
    backward_ws = dict(reversed(list(ws.items())))
    backward = lt.imp_masks(backward_ws, ones(backward_ws), 0.3)
    assert all(np.array_equal(forward[n], backward[n]) for n in ws)
    scaled = dict(ws, w1=100 * ws["w1"])
    assert lt.imp_masks(scaled, ones(ws), 0.3)["w1"].all()
    layer = lt.imp_masks(ws, ones(ws), 0.3, scope="layer")
    layer_scaled = lt.imp_masks(scaled, ones(ws), 0.3, scope="layer")
    assert all(np.array_equal(layer[n], layer_scaled[n]) for n in ws)


def test_l1_ties_go_to_the_lower_flat_index():
    ws = {"a": np.array([[1.0, -1.0, 1.0, 2.0]])}
    assert lt.imp_masks(ws, ones(ws), 0.5)["a"].tolist() == [[False, False, True, True]]


def test_imp_masks_rejects_bad_input():
    ws = weights(0)
    for p in (0.0, 1.0, -0.2, True):
        with pytest.raises(ValueError, match="fraction"):
            lt.imp_masks(ws, ones(ws), p)
    with pytest.raises(ValueError, match="bool"):
        lt.imp_masks(ws, {n: np.ones(W.shape) for n, W in ws.items()}, 0.2)
    with pytest.raises(ValueError, match="scope"):
        lt.imp_masks(ws, ones(ws), 0.2, scope="row")


# ---- (L3)-(L4): resetting, and the whole loop ------------------------------------------------------

def test_l3_l4_reset_puts_survivors_at_their_initial_values_and_the_rest_at_zero():
    theta_0, other = weights(1), weights(2)
    masks = lt.imp_masks(weights(3), ones(theta_0), 0.4)
    for init in (theta_0, other):                              # the ticket and the reinit control
        reset = lt.reset_to(init, masks)
        for n in masks:
            assert np.array_equal(reset[n][masks[n]], init[n][masks[n]]) and not reset[n][~masks[n]].any()


def recording_trainer():
    """A stand-in for training: records what it is given and returns new weights each round."""
    calls = []

    def train_fn(params, masks):
        calls.append((params, masks))
        return weights(10 + len(calls))
    return train_fn, calls


def test_l3_every_round_trains_from_theta_0_and_scores_the_trained_weights():
    """Each round receives m * theta_0 (never the trained weights); the masks follow the trained
    weights only, so another theta_0 gives the same masks."""
    theta_0, dense = weights(1), weights(10)
    train_fn, calls = recording_trainer()
    levels = lt.lottery_tickets(train_fn, theta_0, dense, rounds=3, names=list(theta_0))
    assert len(calls) == len(levels) == 3
    for (params, masks), (level_masks, _) in zip(calls, levels):
        reset = lt.reset_to(theta_0, masks)
        assert all(np.array_equal(params[n], reset[n]) for n in theta_0)
        assert all(np.array_equal(masks[n], level_masks[n]) for n in theta_0)
    other_fn, _ = recording_trainer()
    other = lt.lottery_tickets(other_fn, weights(5), dense, rounds=3, names=list(theta_0))
    assert all(np.array_equal(a[0][n], b[0][n]) for a, b in zip(levels, other) for n in theta_0)


def test_l3_tickets_of_a_transformer_keep_their_zeros_through_training():
    """The real loop on a tiny Seq2Seq: 3 rounds of 20%, each ticket trained 3 Adam steps with the
    mask held; the pruned weights are exactly 0 afterwards and the kept fraction follows (L1)."""
    model = Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=10, D=8, H=2, F=12, enc_layers=1, dec_layers=1,
                                  max_len=10, dropout=0.0))
    theta_0 = model.init_params(np.random.default_rng(0))

    def train_fn(params, masks):
        return train(model, params, lambda epoch: [(SRC, TGT_IN, TGT_OUT)], steps=3, optimizer=adam(),
                     rng=np.random.default_rng(1), schedule=lambda s: 1e-2,
                     method=mp.pruning_method(masks), log=None).params

    dense = train_fn(theta_0, {})
    levels = lt.lottery_tickets(train_fn, theta_0, dense, rounds=3)
    expected = sum(theta_0[n].size for n in mp.prunable_names(theta_0))
    for masks, trained in levels:
        expected -= math.ceil(0.2 * expected)
        assert sum(int(m.sum()) for m in masks.values()) == expected
        assert all(not trained[n][~m].any() for n, m in masks.items())
        assert "emb" not in masks


def test_lottery_tickets_rejects_bad_rounds():
    for rounds in (0, 1.5, True):
        with pytest.raises(ValueError, match="rounds"):
            lt.lottery_tickets(lambda p, m: p, weights(0), weights(1), rounds)
