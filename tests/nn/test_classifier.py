"""Tests of tinyzip.nn.classifier: the BERT-style encoder classifier (Devlin et al. 2019,
arXiv:1810.04805) on the encoder blocks of Vaswani et al. 2017 (arXiv:1706.03762).

The whole-model backward pass is checked against float64 central differences of
L = sum(logits * dout) + sum(state * dstate) for the returned states.
"""
import numpy as np
import pytest

from tinyzip.nn.classifier import ClassifierConfig, EncoderClassifier
from tinyzip.nn.gradcheck import check_backward


def params64(model, seed=0):
    """float64 params, with non-trivial LN and biases so every gradient path is exercised."""
    rng = np.random.default_rng(seed)
    return {k: v.astype(np.float64) + 0.1 * rng.standard_normal(v.shape)
            for k, v in model.init_params(rng).items()}


@pytest.mark.parametrize("activation,pre_ln", [("gelu", False), ("gelu_tanh", True), ("relu", False)])
def test_classifier_backward_matches_central_differences(activation, pre_ln):
    """BERT-style classifier: every parameter, dL/dxi and upstream state gradients."""
    model = EncoderClassifier(ClassifierConfig(vocab=9, n_classes=3, D=4, H=2, F=6, layers=1,
                                               max_len=6, activation=activation, pre_ln=pre_ln))
    params = params64(model, seed=3)
    names = list(params)
    ids, types = np.array([[5, 6, 7, 0], [4, 8, 0, 0]]), np.array([[0, 0, 1, 1], [0, 1, 1, 1]])

    def forward(*arrays):
        logits, cache = model.forward(dict(zip(names, arrays)), ids, types, return_states=True,
                                      head_mask={"enc.0.attn": arrays[-1]})
        return (logits, *cache.states["enc.hidden"], *cache.states["enc.probs"]), cache

    def backward(douts, cache):
        g = model.backward(douts[0], cache, {"enc.hidden": list(douts[1:3]), "enc.probs": [douts[3]]})
        return tuple(g[n] for n in names) + (g["enc.0.attn.head_mask"],)

    check_backward(forward, backward, [params[n] for n in names] + [np.array([1.0, 0.5])])


def test_config_round_trips_and_bad_activation_names_the_problem():
    cfg = ClassifierConfig(vocab=5, n_classes=2)
    assert ClassifierConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="activation"):
        ClassifierConfig(vocab=5, n_classes=2, activation="swish")
