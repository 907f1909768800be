"""The compression protocol every method file shares. Kept small on purpose.

A **weight transform** is a pure pair, like the layers in ``tinyzip.nn``::

    W_eff, cache = transform.forward(W)      # mask, fake-quantize, codebook lookup, ...
    dW = transform.backward(dW_eff, cache)   # straight-through, masked, summed per cluster, ...

A **method** at model level maps parameter names to transforms, plus an optional ``after_step``
hook (e.g. keep pruned weights at zero) and optional activation hooks that the model forward
calls at named points (``"enc.0.attn.W_q:in"`` is the input of that matmul). The training step is
then the same for every method::

    eff, tcache = method.forward(params)                       # identity when nothing is compressed
    loss, deff, stats = model.loss_and_grads(eff, *batch, act_hooks=method.act_hooks)
    grads = method.backward(deff, tcache)
    params, opt = optimizer_step(params, grads, opt, lr)
    params = method.after_step(params)

A **packed tensor** is what a method exports: the arrays that are written to the ``.tz`` file
(int8 values and scales, packed sign planes and alphas, a codebook and packed indices, ...) and
the JSON-serialisable parameters needed to read them back.
"""
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np


class Transform(Protocol):
    """A weight transform: ``forward(W) -> (W_eff, cache)``, ``backward(dW_eff, cache) -> dW``."""

    def forward(self, W: np.ndarray) -> tuple[np.ndarray, object]: ...

    def backward(self, dW_eff: np.ndarray, cache: object) -> np.ndarray: ...


@dataclass(frozen=True)
class Chain:
    """Transforms applied in order (prune, then quantize); backward runs them in reverse."""

    transforms: tuple

    def forward(self, W):
        caches = []
        for transform in self.transforms:
            W, cache = transform.forward(W)
            caches.append(cache)
        return W, caches

    def backward(self, dW_eff, caches):
        for transform, cache in zip(reversed(self.transforms), reversed(caches)):
            dW_eff = transform.backward(dW_eff, cache)
        return dW_eff


def _identity_after_step(params: dict) -> dict:
    return params


@dataclass
class Method:
    """A compression method at model level: parameter name -> transform, plus hooks."""

    name: str
    transforms: dict = field(default_factory=dict)
    after_step: Callable[[dict], dict] = _identity_after_step
    act_hooks: dict = field(default_factory=dict)

    def forward(self, params: dict) -> tuple[dict, dict]:
        """Effective parameters the model sees, and the caches backward needs."""
        unknown = set(self.transforms) - set(params)
        if unknown:
            raise KeyError(f"method {self.name!r} names parameters the model lacks: {sorted(unknown)}")
        eff, caches = dict(params), {}
        for name, transform in self.transforms.items():
            eff[name], caches[name] = transform.forward(params[name])
        return eff, caches

    def backward(self, deff: dict, caches: dict) -> dict:
        """Gradients w.r.t. the stored (latent) parameters from those w.r.t. the effective ones."""
        grads = dict(deff)
        for name, transform in self.transforms.items():
            grads[name] = transform.backward(deff[name], caches[name])
        return grads


IDENTITY = Method("float32")


@dataclass(frozen=True)
class PackedTensor:
    """One tensor as a method stores it: ``arrays`` go to the file, ``meta`` to its JSON manifest.

    ``method`` names how to read it back (``"float32"``, ``"float16"``, ``"kmeans"``, ``"uniform"``,
    ``"binary_codes"``, ``"sparse"``, ...); ``shape`` is the dense tensor's shape.
    """

    method: str
    shape: tuple
    arrays: dict
    meta: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (the file adds only headers and the manifest)."""
        return int(sum(np.asarray(a).nbytes for a in self.arrays.values()))

    @property
    def float32_nbytes(self) -> int:
        return 4 * int(np.prod(self.shape, dtype=np.int64))
