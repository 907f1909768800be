"""Float64 finite-difference gradient checks for the hand-written backward passes.

Every ``*_backward`` in tinyzip is checked the same way (llm.c's "fakeloss" trick): draw a random
upstream gradient ``dout`` of the forward output's shape, define the scalar

    L(x_1, ..., x_n) = sum(out(x_1, ..., x_n) * dout),

so that dL/dout = dout, then compare the analytic ``backward(dout, cache)`` with the fourth-order
central difference

    dL/dx[i] ~= (8 (L(x + h e_i) - L(x - h e_i)) - (L(x + 2h e_i) - L(x - 2h e_i))) / (12 h),

whose truncation error is about h^4 |d^5 L / dx^5| / 30 and whose round-off is about 1.5 delta / h,
delta being the rounding error of one evaluation of L: roughly 1e-16 times sum |out * dout|, which
can be far larger than |L|. With h = 5e-5 both stay far below the default tolerance ``rtol=1e-6,
atol=1e-8``. The plain central difference (L(x + h) - L(x - h)) / (2h), used before, needs h near
1e-6 to keep its truncation h^2 |d^3 L / dx^3| / 6 small, and its round-off delta / h then reaches
that atol: on a two-layer Pre-LN Transformer with every hidden state, score and probability in L
(sum |out * dout| = 585) one entry of 24 missed by 1.9e-8 on one CPU and passed on another. The
fourth-order difference agrees with that backward within 7.2e-10 over every checked entry at
h = 5e-5 (3.4e-9 at 1e-4, where truncation dominates; 3.7e-9 at 1e-5, where round-off does).
Inputs must stay more than 2h from any kink: where kinks crowd (a whole ReLU model perturbed
through a value many weights share, tutorial 03) pass a smaller ``eps``, e.g. 1e-6.
"""
import numpy as np


def numerical_grad(f, x, eps=5e-5):
    """Fourth-order central differences (step ``eps``, see above) of the scalar ``f(x)`` w.r.t. the
    float64 array ``x``.

    ``x`` is perturbed in place, one entry at a time, and restored exactly afterwards.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError(f"numerical_grad needs a float64 ndarray, got {type(x).__name__} "
                        f"of dtype {getattr(x, 'dtype', None)}")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if x.size and not np.shares_memory(flat, x):  # an empty x (a block pruned of all heads) has no entry
        raise ValueError("numerical_grad needs a contiguous x (it perturbs x in place)")
    for i in range(flat.size):
        old = flat[i]
        f_at = {}
        for step in (-2, -1, 1, 2):
            flat[i] = old + step * eps
            f_at[step] = float(f(x))
        flat[i] = old
        gflat[i] = (8.0 * (f_at[1] - f_at[-1]) - (f_at[2] - f_at[-2])) / (12.0 * eps)
    return grad


def _as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


def check_backward(forward, backward, inputs, wrt=None, rng=None, rtol=1e-6, atol=1e-8):
    """Assert ``backward`` equals fourth-order central differences of ``L = sum(out * dout)``.

    ``forward(*inputs) -> (out, cache)`` where ``out`` is an array or a tuple of arrays;
    ``backward(dout, cache)`` returns the gradients in the order of ``inputs`` (bare when there is
    one). ``wrt`` lists the input indices to check (default: every float64 input). Raises
    ``AssertionError`` naming the input and the worst entry.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    inputs = list(inputs)
    if wrt is None:
        wrt = [i for i, x in enumerate(inputs) if isinstance(x, np.ndarray) and x.dtype == np.float64]
    out, cache = forward(*inputs)
    outs = _as_tuple(out)
    douts = tuple(rng.standard_normal(np.shape(o)) for o in outs)
    grads = _as_tuple(backward(douts if isinstance(out, tuple) else douts[0], cache))

    def fakeloss(_):
        new = _as_tuple(forward(*inputs)[0])
        return sum(float(np.sum(o * d)) for o, d in zip(new, douts))

    for i in wrt:
        if i >= len(grads):
            raise AssertionError(f"backward returned {len(grads)} gradients, input {i} has none")
        numeric = numerical_grad(fakeloss, inputs[i])
        analytic = np.asarray(grads[i])
        if analytic.shape != numeric.shape:
            raise AssertionError(f"input {i}: gradient shape {analytic.shape} != input shape "
                                 f"{numeric.shape}")
        err = np.abs(analytic - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if bad.any():
            j = np.unravel_index(np.argmax(err - rtol * np.abs(numeric)), err.shape)
            raise AssertionError(
                f"input {i}: {int(bad.sum())} of {bad.size} entries differ; worst at {j}: "
                f"analytic {analytic[j]!r} vs numeric {numeric[j]!r}")
