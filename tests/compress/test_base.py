"""compress/base.py: transforms compose, methods map names to transforms, packed bytes are counted."""
import numpy as np
import pytest

from tinyzip.compress.base import IDENTITY, Chain, Method, PackedTensor


class Scale:
    """W_eff = c * W, so dW = c * dW_eff: a transform whose gradient is known exactly."""

    def __init__(self, c):
        self.c = c

    def forward(self, W):
        return self.c * W, None

    def backward(self, dW_eff, cache):
        return self.c * dW_eff


class Mask:
    def __init__(self, mask):
        self.mask = mask

    def forward(self, W):
        return W * self.mask, None

    def backward(self, dW_eff, cache):
        return dW_eff * self.mask


def test_chain_applies_in_order_and_backward_is_the_chain_rule():
    rng = np.random.default_rng(0)
    W, dW_eff = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    mask = (rng.random((3, 4)) > 0.5).astype(float)
    chain = Chain((Mask(mask), Scale(3.0)))
    W_eff, caches = chain.forward(W)
    np.testing.assert_array_equal(W_eff, 3.0 * (W * mask))
    np.testing.assert_array_equal(chain.backward(dW_eff, caches), 3.0 * dW_eff * mask)


def test_method_transforms_only_named_params_and_passes_others_through():
    params = {"a": np.ones((2, 2)), "b": np.full((2,), 5.0)}
    method = Method("scale", {"a": Scale(2.0)})
    eff, caches = method.forward(params)
    np.testing.assert_array_equal(eff["a"], 2.0 * params["a"])
    assert eff["b"] is params["b"]
    grads = method.backward({"a": np.ones((2, 2)), "b": np.ones(2)}, caches)
    np.testing.assert_array_equal(grads["a"], np.full((2, 2), 2.0))
    np.testing.assert_array_equal(grads["b"], np.ones(2))
    assert method.after_step(params) is params


def test_identity_method_changes_nothing():
    params = {"a": np.arange(4.0)}
    eff, caches = IDENTITY.forward(params)
    assert eff["a"] is params["a"] and caches == {}


def test_method_naming_a_missing_parameter_is_an_error():
    with pytest.raises(KeyError, match="lacks"):
        Method("m", {"nope": Scale(1.0)}).forward({"a": np.zeros(1)})


def test_packed_tensor_counts_its_stored_bytes():
    packed = PackedTensor("kmeans", (10, 10), {"codebook": np.zeros(16, np.float32),
                                               "indices": np.zeros(50, np.uint8)}, {"bits": 4})
    assert packed.nbytes == 16 * 4 + 50
    assert packed.float32_nbytes == 400
