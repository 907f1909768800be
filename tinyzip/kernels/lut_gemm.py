"""BiQGEMM: matmul with binary-coded weights through lookup tables of signed input sums.

Paper: Jeon, Park, Kwon, Kim, Yun, Lee (2020). "BiQGEMM: Matrix Multiplication with Lookup
Table For Binary-Coding-based Quantized DNNs". SC20, arXiv:2005.09904.

What it computes
----------------
Weights in binary codes (``tinyzip.compress.binary_codes``): W[k, n] = sum_i alpha[i, n] b_i[k, n]
with W: (K, N) = (D_in, D_out), so y = x @ W for x: (M, K). A "row" of the paper's W is one
output unit n, i.e. a column of our W. Split the inputs into sub-vectors of mu = 8 and pack the
8 signs of b_i[8t:8t+8, n] into one byte, the key (bit j = 1 means +1 for input 8t+j):

(1) T_t[key] = sum_{j<8} (2 bit_j(key) - 1) x[8t + j]            all 256 signed sums of x^(t)
(2) T_t[0] = -sum_j x[8t + j];  T_t[key + 2^s] = T_t[key] + 2 x[8t + s] for key < 2^s
    (the doubling build: 255 additions per table instead of 8 * 256)
(3) y[m, n] = sum_i alpha[i, n] * sum_t T_t^(m)[key_{i,n,t}]      (one look-up per 8 weights)

References: ``lut_matmul_reference`` (NumPy, builds every table explicitly) and, for the
numbers, dense ``x @ dequantize(codes, alphas)``; the kernels equal both within a float32
tolerance of order K * eps * (|x| @ sum_i |alpha_i|) (the sums are re-associated).
K not a multiple of 128 (16 keys, so every kernel's key groups divide evenly): x is padded with
zero inputs, the pad keys are 0, and the pad adds 0.

Dtypes: x float32, keys uint8, alphas float32, accumulation float32, output float32. The table
is built by doubling, Eq. (2), not Gray code.

Optimisations (perf-notes sections 3, 7, 8):
* M = 1 on AVX-512, q <= 3 (``lut_gemv_avx512.py``): each table split into two 16-float halves,
  one zmm each, looked up for 16 units by one ``vpermps`` (2 threads, Zen 4, vs numpy: 1024^2
  1.7-4.2x, 4096^2 4.1-8.5x, where this file's kernel read 0.53-1.38x and 1.7-3.6x).
* M = 1 elsewhere (``_lut_gemv_kernel``): one parallel region; each of the ``nchunks`` chunks builds
  every table (K/8 x 256 floats, cheap), then walks the groups of 8 sub-vectors in the outer loop and
  its output units in the inner one, so the group's 8 tables (8 KB) stay in L1 while the keys
  (the batched layout below) stream past; y[n] accumulates in memory (N floats, L1/L2).
* M >= 2 (``_lut_gemm_mt{MT}_q{Q}_kernel`` in ``_lut_generated.py``, written by
  ``_generated_source``; regenerate with ``lut_gemm.write_generated()``): keys stored
  (q, Kb/8, N, 8) uint8, so the keys of one output unit are adjacent bytes (a key load is one
  movzbl, no shift-and-mask); outputs accumulate in (M/MT, N, MT) so a tile's rows are contiguous,
  and each thread copies its units of a finished tile into y (M, N) while they are in its cache.
  x.T is made by ``_transpose_into`` (blocked; NumPy's ``x.T`` copy and the final transpose took
  0.4-0.6 ms of a 4 ms call at batch 32, 4096^2).
  Per thread a block of output units; for each batch tile of MT columns and each group of JT
  sub-vectors (``JT_OF``: 4 at MT = 32, 8 at MT = 16, 8 or 16 at MT = 8: 16K-32K floats, L2)
  the thread builds just that tile of tables and uses it on all its rows. Build and query are
  straight-line code over MT with uint64 indices and all loads before stores, so LLVM's SLP
  vectoriser (NUMBA_SLP_VECTORIZE=1, set by ``import tinyzip``) emits ymm adds; the q bit planes
  accumulate in registers before one store, and the loop over planes is unrolled where that
  measured faster (``QS_OF``: q = 1, 2 at MT = 32, +10%; q = 2, 3 at MT = 8, up to +35%; MT = 16
  has only the q = 1, 3 kernels, where it beat MT = 8).
  The JT look-ups of a plane are summed as a balanced tree (short dependency chain), and
  ``fastmath={'contract'}`` lets LLVM fuse ``o + alpha * sum`` into one FMA: no reassociation,
  only one rounding fewer, so the tolerance above still holds. The batch is zero-padded to the
  tile width (32, 16 or 8) with the lowest measured cost, ``MT_COST``: 16 from batch 9 to 16 and
  41 to 48 (q = 1, 3), 32 from 25 to 32.
* ``prange`` runs over chunks of output units; each chunk writes only its own rows of ``out``
  and owns its table buffer, so the loop is race-free.

Dispatch (``lut_linear``, rule in ``use_lut``): where the LUT path measured slower than numpy
float32 (M = 1 under 256K weights on AVX-512, else under 4M, 1M at q = 1; N q < 1024 at any batch;
above batch 32, q = 2 under 1M weights and q = 3 under 16M; q = 2, 3 above batch 128; q > 3),
x @ W on the dequantized float32 W (made once, kept): NumPy's own product plus the input checks.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import get_num_threads, njit, prange, set_num_threads

from tinyzip.compress.base import PackedTensor
from tinyzip.compress.binary_codes import dequantize, unpack_codes
from tinyzip.kernels import _lut_generated, aligned_copy, all_finite, lut_gemv_avx512

MU = 8                                 # inputs per key
MTS = (32, 16, 8)                      # batch tile widths of the batched kernels
# sub-vectors per table tile, per kernel: 4 x 256 x 32, 8 x 256 x 16 or 8 x 256 x 8 floats; 16 x 256 x 8
# for the MT = 8 kernel of any q (used for q = 1): 2-3x faster than 8 there (1 thread under load, 4096^2,
# batch 8), while the unrolled q = 2, 3 kernels measured 1.2-1.5x slower with 16
JT_OF = {(32, "1"): 4, (32, "2"): 4, (32, "n"): 4, (16, "1"): 8, (16, "3"): 8, (8, "2"): 8, (8, "3"): 8,
         (8, "n"): 16}
GROUP = max(JT_OF.values()) // MU      # key groups of 64 inputs per tile, at most (K is padded to it)
# bit-plane loops unrolled for these q ("n": any q), where unrolling measured faster. Not q = 1 at
# MT = 8: LLVM then vectorises the loop over output units instead (gathers, 4x slower); not q = 3
# at MT = 32: no gain measured, and each kernel adds ~5-9 s of cold compile. MT = 16 only for q = 1, 3:
# at batch 12 and 16 (4096^2, 2 threads, four runs) 1.1-1.45x (q = 1) and 1.05-1.4x (q = 3) faster than
# MT = 8, while its q = 2 and general kernels measured no faster than MT = 8
QS_OF = {32: ("1", "2", "n"), 16: ("1", "3"), 8: ("2", "3", "n")}
MT_COST = {32: 1.0, 16: 1.05, 8: 1.25}  # measured time per batch column of each tile width
SERIAL_WORK = 1 << 22                  # M*K*N*q below this runs on one thread (see lut_linear)


def lut_tables(x: np.ndarray) -> np.ndarray:
    """Eqs. (1)-(2) in NumPy: tables (M, Kb, 256) of x (M, 8 Kb), built by doubling."""
    M, Kp = x.shape
    xs = x.reshape(M, Kp // MU, MU)                                        # (M, Kb, 8)
    T = np.empty((M, Kp // MU, 256), dtype=x.dtype)                        # (M, Kb, 256)
    # Eq. (2)
    T[:, :, 0] = -xs.sum(axis=2)
    for s in range(MU):
        h = 1 << s
        T[:, :, h:2 * h] = T[:, :, :h] + 2 * xs[:, :, s:s + 1]
    return T


def lut_matmul_reference(x: np.ndarray, keys: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Eq. (3) in NumPy: x (M, 8 Kb), keys (N, q, Kb) uint8, alpha (q, N) -> y (M, N)."""
    T = lut_tables(x)                                                      # (M, Kb, 256)
    Kb = keys.shape[2]
    looked_up = T[:, np.arange(Kb)[None, None, :], keys]                   # (M, N, q, Kb)
    sums = looked_up.sum(axis=3)                                           # (M, N, q)
    # Eq. (3)
    return (sums * alpha.T[None]).sum(axis=2)                              # (M, N)


@njit(parallel=True, cache=True, fastmath={'contract'})
def _lut_gemv_kernel(x, keys, alpha, out, nchunks):
    q, G8, N, _ = keys.shape                                               # keys (q, Kb/8, N, 8)
    kf = keys.reshape(-1)
    for c in prange(nchunks):
        T = np.empty(G8 * MU * 256, np.float32)                            # every table, (Kb, 256)
        for t in range(G8 * MU):                                           # Eq. (2)
            tb = t * 256
            s0 = np.float32(0.0)
            for j in range(MU):
                s0 -= x[MU * t + j]
            T[tb] = s0
            for s in range(MU):
                h = 1 << s
                two_x = np.float32(2.0) * x[MU * t + s]
                for k in range(h):
                    T[tb + h + k] = T[tb + k] + two_x
        n0, n1 = c * N // nchunks, (c + 1) * N // nchunks
        out[n0:n1] = 0.0
        for g in range(G8):                # the 8 tables of group g (8 KB) stay in L1 for all n
            tg = np.uint64(g * MU * 256)
            for n in range(n0, n1):                                        # Eq. (3)
                y = out[n]
                for i in range(q):
                    kb = np.uint64(((i * G8 + g) * N + n) * MU)            # keys[i, g, n, 0]
                    # sum_u T[8g + u][keys[i, g, n, u]], u = 0..7, as a balanced tree
                    s = (((T[tg + np.uint64(kf[kb])]
                           + T[tg + np.uint64(256) + np.uint64(kf[kb + np.uint64(1)])])
                          + (T[tg + np.uint64(512) + np.uint64(kf[kb + np.uint64(2)])]
                             + T[tg + np.uint64(768) + np.uint64(kf[kb + np.uint64(3)])]))
                         + ((T[tg + np.uint64(1024) + np.uint64(kf[kb + np.uint64(4)])]
                             + T[tg + np.uint64(1280) + np.uint64(kf[kb + np.uint64(5)])])
                            + (T[tg + np.uint64(1536) + np.uint64(kf[kb + np.uint64(6)])]
                               + T[tg + np.uint64(1792) + np.uint64(kf[kb + np.uint64(7)])])))
                    y = y + alpha[i, n] * s
                out[n] = y


def _tree_sum(terms: list[str]) -> str:
    """``(t0 + t1) + (t2 + t3)``: a balanced sum keeps the dependency chain short."""
    while len(terms) > 1:
        terms = [f"({a} + {b})" for a, b in zip(terms[::2], terms[1::2])] + terms[len(terms) - len(terms) % 2:]
    return terms[0]


def _generated_source() -> str:
    """Source of ``_lut_generated.py``: one batched kernel per batch tile MT and per q in
    ``QS_OF[MT]`` (the plane loop unrolled; "n": any q). Regenerate with ``python -c "from
    tinyzip.kernels import lut_gemm; lut_gemm.write_generated()"`` after editing this function."""
    u64 = lambda v: f"np.uint64({v})"                                      # noqa: E731
    lines = ['"""Generated by tinyzip.kernels.lut_gemm._generated_source; do not edit. Regenerate with',
             '``python -c "from tinyzip.kernels import lut_gemm; lut_gemm.write_generated()"``."""',
             "import numpy as np", "from numba import njit, prange", ""]
    for MT in MTS:
        for Q in QS_OF[MT]:
            JT = JT_OF[MT, Q]                                              # sub-vectors per table tile
            lines += ["", "@njit(parallel=True, cache=True, fastmath={'contract'})",
                      f"def _lut_gemm_mt{MT}_q{Q}_kernel(xt, Mp, keys, alpha, out, y, M, nchunks):",
                      "    q, N = alpha.shape",
                      f"    G8 = keys.size // (q * N * {MU})",
                      "    for c in prange(nchunks):",
                      f"        T = np.empty({JT * 256 * MT}, np.float32)",
                      f"        for m0 in range(0, Mp, {MT}):",
                      f"            for g in range(G8 * {MU} // {JT}):",
                      f"                for u in range({JT}):",                 # Eq. (2) for one tile
                      f"                    xb = np.uint64(8 * ({JT} * g + u) * Mp + m0)",
                      f"                    tb = np.uint64(u * {256 * MT})",
                      f"                    for mm in range({MT}):",
                      "                        s0 = np.float32(0.0)",
                      "                        for j in range(8):",
                      "                            s0 -= xt[xb + np.uint64(j * Mp + mm)]",
                      "                        T[tb + np.uint64(mm)] = s0",
                      "                    for s in range(8):",
                      "                        xs = xb + np.uint64(s * Mp)"]
            lines += [f"                        d{m} = np.float32(2.0) * xt[xs + {u64(m)}]" for m in range(MT)]
            lines += ["                        h = 1 << s",
                      "                        for k in range(h):",
                      f"                            src = tb + np.uint64(k * {MT})",
                      f"                            dst = src + np.uint64(h * {MT})"]
            lines += [f"                            e{m} = T[src + {u64(m)}]" for m in range(MT)]
            lines += [f"                            T[dst + {u64(m)}] = e{m} + d{m}" for m in range(MT)]
            lines += ["                for n in range(c * N // nchunks, (c + 1) * N // nchunks):",   # Eq. (3)
                      f"                    ob = np.uint64(m0 * N + n * {MT})"]
            lines += [f"                    o{m} = out[ob + {u64(m)}]" for m in range(MT)]
            lines += [f"                    for i in range({'q' if Q == 'n' else Q}):"]
            if JT <= MU:
                lines += [f"                        kb0 = np.uint64(((i * G8 + g // {MU // JT}) * N + n) * {MU}"
                          f" + g % {MU // JT} * {JT})"]
            else:
                lines += [f"                        kb{v} = np.uint64(((i * G8 + g * {JT // MU} + {v}) * N + n) * {MU})"
                          for v in range(JT // MU)]
            lines += ["                        a = alpha[i, n]"]
            key = lambda u: f"keys[kb{u // MU} + {u64(u % MU)}]"                 # noqa: E731
            lines += [f"                        b{u} = {u64(u * 256 * MT)} + np.uint64({key(u)}) * {u64(MT)}"
                      for u in range(JT)]
            lines += [f"                        o{m} = o{m} + a * " + _tree_sum([f"T[b{u} + {u64(m)}]" for u in range(JT)])
                      for m in range(MT)]
            lines += [f"                    out[ob + {u64(m)}] = o{m}" for m in range(MT)]
            lines += ["            n_lo, n_hi = c * N // nchunks, (c + 1) * N // nchunks   # the tile's rows of y",
                      f"            for mm in range(min({MT}, M - m0)):",
                      "                yb = np.uint64((m0 + mm) * N)",
                      "                for n in range(n_lo, n_hi):",
                      f"                    y[yb + np.uint64(n)] = out[np.uint64(m0 * N + n * {MT} + mm)]"]
    return "\n".join(lines) + "\n"


def write_generated() -> None:
    """Rewrite ``_lut_generated.py`` from ``_generated_source`` (keeps the two in sync)."""
    Path(__file__).with_name("_lut_generated.py").write_text(_generated_source())


@dataclass
class LutWeights:
    """Binary-coded weights laid out for the kernels. Kb = ceil(K / 128) * 16 keys per unit and
    plane (pad keys 0). ``keys_nqt`` uint8 (N, q, Kb) is the reference layout
    (``lut_matmul_reference``, the dense fallback); ``keys_qgn`` uint8 (q, Kb/8, N, 8) feeds both
    kernels: the 8 keys of one unit and group of 64 inputs are adjacent (so the weights sit in
    memory twice: 2q bits per weight); ``alpha`` float32 (q, N). ``blocks`` (keys, alpha) in
    ``lut_gemv_avx512.pack_blocks``' layout, on AVX-512 CPUs for q <= 3 (a third copy of the keys).
    ``dense`` (K, N) caches the dequantized float32 W the first time the dense path needs it."""

    K: int
    N: int
    q: int
    keys_nqt: np.ndarray
    keys_qgn: np.ndarray
    alpha: np.ndarray
    blocks: tuple | None = field(default=None, repr=False)
    dense: np.ndarray | None = field(default=None, repr=False)


def prepare_lut_weights(packed: PackedTensor | None = None, *, codes=None, alphas=None) -> LutWeights:
    """From a ``binary_codes`` PackedTensor, or from codes (q, K, N) in {-1,+1} and alphas (q, N)."""
    if (packed is None) == (codes is None):
        raise ValueError("give either a packed tensor or codes= and alphas=")
    if packed is not None:
        codes, alphas = unpack_codes(packed)
    codes, alphas = np.asarray(codes), np.asarray(alphas)
    if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer) or not np.all(np.abs(codes) == 1):
        raise ValueError(f"codes must be integer (q, K, N) with values in {{-1,+1}}, got {codes.dtype} {codes.shape}")
    q, K, N = codes.shape
    if not 1 <= q <= 8:
        raise ValueError(f"q must be in 1..8, got {q}")
    if alphas.shape != (q, N) or not np.issubdtype(alphas.dtype, np.floating) or not np.all(np.isfinite(alphas)):
        raise ValueError(f"alphas must be finite floats of shape {(q, N)}, got {alphas.dtype} {alphas.shape}")
    Kb = -(-K // (MU * MU * GROUP)) * MU * GROUP                           # a multiple of 8 GROUP keys
    bits = np.zeros((q, N, MU * Kb), dtype=np.uint8)                       # (q, N, 8 Kb)
    bits[:, :, :K] = np.moveaxis(codes, 1, 2) > 0
    keys = np.packbits(bits, axis=2, bitorder="little")                    # (q, N, Kb)
    alpha32 = np.ascontiguousarray(alphas, dtype=np.float32)
    keys_qgn = np.ascontiguousarray(keys.reshape(q, N, Kb // MU, MU).transpose(0, 2, 1, 3))  # (q, Kb/8, N, 8)
    keys_nqt = np.ascontiguousarray(keys.transpose(1, 0, 2))                                   # (N, q, Kb)
    blocks = (lut_gemv_avx512.pack_blocks(keys_nqt, alpha32)
              if lut_gemv_avx512.HAS_AVX512 and q <= lut_gemv_avx512.MAX_Q else None)
    return LutWeights(K, N, q, keys_nqt, keys_qgn, alpha32, blocks)


def use_lut(M: int, q: int, K: int, N: int) -> bool:
    """Dispatch rule: True where the LUT kernel beat numpy float32 ``x @ W`` when measured, else
    False (dequantize once, then numpy). Building the tables costs 255 adds per sub-vector and
    batch column whoever uses them, the look-ups N q per sub-vector and column: below N q = 1024
    the build outweighs the saving. q > 3 was not measured: dense.

    Measured speed-up over numpy, one thread each (CPU time, medians of alternating repeats, the
    other core busy), M = 1 / 8 / 32 / 128:
    W 4096^2:      q=1 3.31 / 4.32 / 3.70 / 2.86x; q=2 1.68 / 3.34 / 2.41 / 1.43x; q=3 1.19 / 2.58 / 1.33 / 1.28x
    W 4096x1024:   q=1 2.86 / 3.33 / 2.48 / 1.52x; q=2 1.58 / 2.92 / 1.85 / 1.13x; q=3 1.18 / 2.14 / 1.16 / 1.05x
    W 1024^2:      q=1 1.15 / 2.69 / 1.87 / 1.44x; q=2 0.75 / 2.27 / 1.22 / 1.18x; q=3 0.56 / 1.85 / 1.08 / 0.76x
    W 256x1024:    q=1 0.76 / 1.84 / 1.35 / 1.22x; q=2 0.53 / 1.56 / 1.20 / 1.03x; q=3 0.43 / 1.44 / 1.15 / 0.74x
    W 1024x256:    at most 1.00x (M = 8), 0.36-0.92x elsewhere; W 256^2: 0.21-0.91x.
    Above M = 32 (2 threads, alternating with numpy, three passes, 2026-11-23; the batched path as it
    is since the in-kernel transpose and copy): q=2 at M = 64 / 128 1.23 / 1.19x on 1024^2, 1.37 / 1.29x
    on 4096x1024, 2.05 / 1.78x on 4096^2; q=3 0.96 / 0.94x, 1.11 / 0.95x (0.92-1.14 by pass), 1.43 / 1.27x.
    So above M = 32: q=2 from 1M weights up, q=3 from 16M, up to the measured M = 128; dense beyond.
    M = 1 on AVX-512 (``lut_gemv_avx512``, 2 threads, 2026-11-24): 1.2-2.5x on 256x1024 and 1024x256,
    0.8-1.1x on 512x128 and 128x512 (11-14 us calls, q = 1-3): LUT from 256K weights.
    """
    if q > 3:
        return False
    if M == 1:                                    # on AVX-512 (q <= 3 here) the vpermps kernel
        return K * N >= 1 << 18 if lut_gemv_avx512.HAS_AVX512 else K * N >= 1 << 22 or (q == 1 and K * N >= 1 << 20)
    if N * q < 1024:
        return False
    if M <= 32:
        return True
    return q == 1 or (M <= 128 and K * N >= (1 << 20 if q == 2 else 1 << 24))


def lut_linear(x: np.ndarray, prepared: LutWeights, bias: np.ndarray | None = None, *,
               path: str = "auto") -> np.ndarray:
    """y = x @ W + bias with W in binary codes; x float32 (M, K) -> float32 (M, N).

    ``path``: "auto" follows ``use_lut``; "lut" or "dense" force one path (tests, benchmarks).
    """
    if path not in ("auto", "lut", "dense"):
        raise ValueError(f"path must be 'auto', 'lut' or 'dense', got {path!r}")
    if not isinstance(prepared, LutWeights):
        raise TypeError(f"prepared must come from prepare_lut_weights, got {type(prepared).__name__}")
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(f"x must be a float32 ndarray, got {getattr(x, 'dtype', type(x))}")
    if x.ndim != 2 or x.shape[1] != prepared.K or x.shape[0] == 0:
        raise ValueError(f"x must have shape (M >= 1, {prepared.K}), got {x.shape}")
    if bias is not None and (not isinstance(bias, np.ndarray) or bias.dtype != np.float32
                             or bias.shape != (prepared.N,)):
        raise ValueError(f"bias must be float32 of shape ({prepared.N},), got {getattr(bias, 'dtype', None)} "
                         f"{getattr(bias, 'shape', None)}")
    M, (N, q, _) = x.shape[0], prepared.keys_nqt.shape
    dense = path == "dense" or (path == "auto" and not use_lut(M, q, prepared.K, N))
    if (dense or M == 1) and not all_finite(x):             # the batched LUT path checks x as it copies it
        raise ValueError("x contains NaN or inf")
    if dense:
        if prepared.dense is None:
            prepared.dense = aligned_copy(_dequantized(prepared))                   # (K, N)
        y = x @ prepared.dense
    else:
        # small calls run on one thread: a parallel region costs tens of microseconds and its
        # closing barrier waits for every worker (perf-notes section 9, "run small layers serially")
        threads = get_num_threads()
        serial_work = lut_gemv_avx512.SERIAL_WORK if M == 1 and prepared.blocks is not None else SERIAL_WORK
        set_num_threads(1 if M * prepared.K * N * q < serial_work else threads)
        try:
            y = _lut_matmul(x, prepared, min(get_num_threads(), N))
        finally:
            set_num_threads(threads)
    return y if bias is None else y + bias


def _dequantized(prepared):
    """W = sum_i alpha_i b_i as float32 (K, N), from the packed keys."""
    bits = np.unpackbits(prepared.keys_nqt, axis=2, bitorder="little")[:, :, :prepared.K]  # (N, q, K)
    codes = 2 * bits.transpose(1, 2, 0).astype(np.int8) - 1                 # (q, K, N)
    return dequantize(codes, prepared.alpha)


def _lut_matmul(x, prepared, nchunks):
    """Pad x with zero inputs (and the batch to the tile width), run the M = 1 or M >= 2 kernel."""
    M, (N, q, Kb) = x.shape[0], prepared.keys_nqt.shape
    if M == 1:
        xp = np.zeros(MU * Kb, dtype=np.float32)                           # zero-padded inputs
        xp[:prepared.K] = x[0]
        if prepared.blocks is not None:
            return lut_gemv_avx512.lut_gemv(xp, *prepared.blocks, N)[None, :]
        y = np.empty(N, dtype=np.float32)
        _lut_gemv_kernel(xp, prepared.keys_qgn, prepared.alpha, y, nchunks)
        return y[None, :]                                                  # (1, N)
    kernels = {mt: k for mt in MTS if (k := _batched_kernel(mt, q)) is not None}
    MT = min(kernels, key=lambda mt: -(-M // mt) * mt * MT_COST[mt])   # pad to the cheapest tile
    Mp = -(-M // MT) * MT
    xt = np.zeros((MU * Kb, Mp), dtype=np.float32)                     # (8 Kb, Mp): x.T, padded
    if not _transpose_into(x, xt):
        raise ValueError("x contains NaN or inf")
    out = np.zeros((Mp // MT, N, MT), dtype=np.float32)                # (tiles, N, MT) accumulators
    y = np.empty((M, N), dtype=np.float32)
    kernels[MT](xt.reshape(-1), Mp, prepared.keys_qgn.reshape(-1), prepared.alpha, out.reshape(-1), y.reshape(-1),
                M, nchunks)
    return y


def _batched_kernel(MT, q):
    """The generated kernel for batch tile MT and q bit planes: the unrolled one for q, else the
    general one ("n"), else None (that tile has no kernel for q)."""
    Q = str(q) if str(q) in QS_OF[MT] else "n" if "n" in QS_OF[MT] else None
    return None if Q is None else getattr(_lut_generated, f"_lut_gemm_mt{MT}_q{Q}_kernel")


@njit(cache=True)
def _transpose_into(x, xt):
    """xt[k, m] = x[m, k] for x (M, K), 64 rows of xt (8 KB at Mp = 32) at a time so the writes stay in
    L1: 3-4x faster than NumPy's ``xt[:K, :M] = x.T``. False, at once, on a NaN or inf: the check
    rides on the copy instead of a NumPy pass of its own."""
    M, K = x.shape
    for k0 in range(0, K, 64):
        for m in range(M):
            for k in range(k0, min(K, k0 + 64)):
                v = x[m, k]
                if not np.isfinite(v):
                    return False
                xt[k, m] = v
    return True


def lut_matmuls(packed: dict) -> dict:
    """``{weight name: x2d (N, D_in) -> (N, D_out)}`` for the model forward's ``matmuls`` hook:
    every "binary_codes" tensor of a packed model runs on ``lut_linear`` (inference only)."""
    prepared = {name: prepare_lut_weights(p) for name, p in packed.items() if p.method == "binary_codes"}
    return {name: (lambda x, P=P: lut_linear(np.ascontiguousarray(x, dtype=np.float32), P))
            for name, P in prepared.items()}
