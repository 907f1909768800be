"""The AVX2 int8 microkernel: vpmaddwd on pre-packed weights, through a Numba ``@intrinsic``.

Computes the same Eq. (7) product as ``int8.py``'s portable kernels (Jacob et al. 2018,
arXiv:1712.05877), on the layout ``pack_weight`` makes: Wp (ceil(N/8), ceil(K/2), 16) int8,
Wp[b, j, 2c + i] = W_t[8b + c, 2j + i] (8 output columns x a pair of k per 16 bytes, zero padded).

LLVM widens the int8 products of plain Numba loops to 8 int32 lanes (vpmovsxbd + vpmulld); the x86
instruction vpmaddwd does 16 int16 products and adds neighbouring pairs into 8 int32 lanes:

    pmaddwd(a, b)[c] = a[2c] b[2c] + a[2c + 1] b[2c + 1]       (exact: no saturation for int8 or
                                                                |a| <= 255 inputs)

With a = (x[m, 2j], x[m, 2j + 1]) broadcast to all 8 lanes (one int32, vpbroadcastd) and b = the
packed weights sign-extended in-register (vpmovsxbw from memory), lane c gains
x[m, 2j] W_t[n, 2j] + x[m, 2j + 1] W_t[n, 2j + 1] for column n = 8 b + c: one instruction, 16 MACs.
Register tile: 4 rows x 3 blocks of 8 columns = 12 ymm accumulators (of 16); k blocked by 256 pairs
so 4 rows x 1 KB of x and 3 x 4 KB of weights stay in L1. The 4 x 3 tile alone runs ~70 GMAC/s
per thread against ~33 for the portable 2 x 4 tile. Padding (N to 8, K to 2) is zeros on both
sides, so results are bit-identical. ``HAS_AVX2`` is False without AVX2 or when NUMBA_CPU_NAME
names another target; callers then keep the portable kernel.

The epilogue (``_packed_linear_body``) is ``int8.py``'s: y = float32((sx[m] sw[n]) (acc - zw[n]
rowsum[m]) + bias[n]) in float64, no fastmath.
"""
import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, config
from numba.extending import intrinsic

from tinyzip.kernels import parallel_and_serial


def host_cpu_has(feature):
    """True when Numba compiles for this CPU (NUMBA_CPU_NAME unset or "host") and LLVM lists
    ``feature`` ("avx2", "avx512vnni") for it: only then can an intrinsic that needs it be used
    (otherwise int8_linear keeps another kernel)."""
    if config.CPU_NAME not in (None, "host"):
        return False
    return "+" + feature in llvm_binding.get_host_cpu_features().flatten().split(",")


HAS_AVX2 = host_cpu_has("avx2")
_MR, _NR = 4, 3  # register tile: 4 rows x 3 blocks of 8 columns = 12 ymm accumulators (of 16)
_KC = 256        # k-pairs per cache block: 4 rows x 1 KB of x + 3 x 4 KB of weights stay in L1
_V16I8, _V16I16, _V8I32 = ir.VectorType(ir.IntType(8), 16), ir.VectorType(ir.IntType(16), 16), \
    ir.VectorType(ir.IntType(32), 8)


def pack_weight(W_t):
    """The AVX2 layout: W_t (N, K) int8 -> Wp (ceil(N/8), ceil(K/2), 16) int8 with
    Wp[b, j, 2c + i] = W_t[8b + c, 2j + i], zero where 8b + c >= N or 2j + i >= K (zeros add nothing)."""
    if not isinstance(W_t, np.ndarray) or W_t.dtype != np.int8 or W_t.ndim != 2 or W_t.size == 0:
        raise TypeError(f"W_t must be a non-empty 2-D int8 ndarray, got {getattr(W_t, 'dtype', type(W_t).__name__)} "
                        f"{getattr(W_t, 'shape', '')}")
    N, K = W_t.shape
    NB, K2 = -(-N // 8), -(-K // 2)
    padded = np.zeros((8 * NB, 2 * K2), np.int8)
    padded[:N, :K] = W_t
    return np.ascontiguousarray(padded.reshape(NB, 8, K2, 2).transpose(0, 2, 1, 3)).reshape(NB, K2, 16)


def _make_tile(MR, NR):
    """An intrinsic tile(xp, wp, acc, m0, b0, k0, k1): for r < MR, c < NR
    acc[m0 + r, 8 (b0 + c) : 8 (b0 + c + 1)] (+)= sum_{j = k0}^{k1 - 1} pmaddwd(xp[m0 + r, j], wp[b0 + c, j]),
    starting from 0 when k0 == 0 (else from acc). The accumulators are <8 x i32> registers."""
    @intrinsic
    def tile(typingctx, xp, wp, acc, m0, b0, k0, k1):
        if not (isinstance(xp, types.Array) and xp.dtype == types.int32 and wp.dtype == types.int8
                and acc.dtype == types.int32):
            return None

        def codegen(context, builder, sig, args):
            xa, wa, aa = (context.make_array(t)(context, builder, a) for t, a in zip(sig.args[:3], args[:3]))
            m0v, b0v, k0v, k1v = (context.cast(builder, a, t, types.intp) for t, a in zip(sig.args[3:], args[3:]))
            intp = context.get_value_type(types.intp)

            def const(i):
                return ir.Constant(intp, i)
            K2 = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
            NP = cgutils.unpack_tuple(builder, aa.shape, 2)[1]
            pmaddwd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8I32, [_V16I16, _V16I16]), "llvm.x86.avx2.pmadd.wd")
            x_rows = [builder.gep(xa.data, [builder.mul(builder.add(m0v, const(r)), K2)]) for r in range(MR)]
            w_base = builder.bitcast(wa.data, _V16I8.as_pointer())  # wp[b, j] is one <16 x i8>
            w_blocks = [builder.gep(w_base, [builder.mul(builder.add(b0v, const(c)), K2)]) for c in range(NR)]
            out = [[builder.bitcast(builder.gep(aa.data, [builder.add(builder.mul(builder.add(m0v, const(r)), NP),
                                                                      builder.mul(builder.add(b0v, const(c)), const(8)))]),
                                    _V8I32.as_pointer()) for c in range(NR)] for r in range(MR)]
            first = builder.icmp_signed("==", k0v, const(0))
            accs = [[cgutils.alloca_once(builder, _V8I32) for c in range(NR)] for r in range(MR)]
            for r in range(MR):
                for c in range(NR):
                    start = builder.select(first, ir.Constant(_V8I32, None), builder.load(out[r][c], align=4))
                    builder.store(start, accs[r][c])
            with cgutils.for_range_slice(builder, k0v, k1v, const(1)) as (j, _):
                w = [builder.sext(builder.load(builder.gep(w_blocks[c], [j]), align=1), _V16I16) for c in range(NR)]
                for r in range(MR):
                    xj = builder.load(builder.gep(x_rows[r], [j]), align=4)  # (x[m, 2j], x[m, 2j + 1]) as int16
                    xv = builder.insert_element(ir.Constant(_V8I32, ir.Undefined), xj, ir.Constant(ir.IntType(32), 0))
                    xv = builder.bitcast(builder.shuffle_vector(xv, xv, ir.Constant(_V8I32, None)), _V16I16)
                    for c in range(NR):
                        builder.store(builder.add(builder.load(accs[r][c]), builder.call(pmaddwd, [xv, w[c]])),
                                      accs[r][c])
            for r in range(MR):
                for c in range(NR):
                    builder.store(builder.load(accs[r][c]), out[r][c], align=4)
            return context.get_dummy_value()
        return types.void(xp, wp, acc, m0, b0, k0, k1), codegen
    return tile


_tile_full, _tile_row, _tile_col, _tile_one = _make_tile(_MR, _NR), _make_tile(1, _NR), _make_tile(_MR, 1), \
    _make_tile(1, 1)


@njit(cache=True)
def _packed_group(xp, wp, acc, b0, kc):
    """acc[:, 8 b0 : 8 (b0 + _NR)] = raw int32 products of all rows with column blocks b0.., kc k-pairs
    at a time."""
    M, K2 = xp.shape
    nb = min(_NR, wp.shape[0] - b0)
    for k0 in range(0, K2, kc):
        k1 = min(K2, k0 + kc)
        for b in range(b0, b0 + nb, nb if nb == _NR else 1):
            m = 0
            while m + _MR <= M:
                if nb == _NR:
                    _tile_full(xp, wp, acc, m, b, k0, k1)
                else:
                    _tile_col(xp, wp, acc, m, b, k0, k1)
                m += _MR
            while m < M:
                if nb == _NR:
                    _tile_row(xp, wp, acc, m, b, k0, k1)
                else:
                    _tile_one(xp, wp, acc, m, b, k0, k1)
                m += 1


@njit(cache=True)
def dequantize_columns(acc, sx, sw, zw, rowsum, bias, y, n0, n1):
    """The epilogue for output columns n0..n1 - 1 of every row m:
    y[m, n] = float32((sx[m] sw[n]) (acc[m, n] - zw[n] rowsum[m]) + bias[n]), float64 inside.
    Written on slices: indexed by a range whose ends are arguments, Numba keeps its negative-index
    wrap-around and LLVM does not vectorise the loop (1920 rows x 512 columns, one thread: 1.8-2.2 ms
    against 0.28-0.36 ms on slices), which made the epilogue cost more than a K = 128 product."""
    s_w, z_w, b = sw[n0:n1], zw[n0:n1], bias[n0:n1]
    for m in range(y.shape[0]):
        scale, r = sx[m], rowsum[m]
        a, out = acc[m, n0:n1], y[m, n0:n1]
        for j in range(out.shape[0]):
            out[j] = np.float32((scale * s_w[j]) * np.float64(np.int32(a[j] - z_w[j] * r)) + b[j])


def _packed_linear_body(xp, wp, sx, sw, zw, rowsum, bias, acc, y):
    """_linear_body on the packed layout; acc is (M, 8 ceil(N / 8)) int32 scratch."""
    M, N = y.shape
    kc = _KC if M >= _MR else xp.shape[1]  # under _MR rows x is read once: stream W without breaks
    for g in prange((wp.shape[0] + _NR - 1) // _NR):
        b0 = g * _NR
        _packed_group(xp, wp, acc, b0, kc)
        dequantize_columns(acc, sx, sw, zw, rowsum, bias, y, 8 * b0, min(N, 8 * (b0 + _NR)))


packed_linear_kernel, packed_linear_kernel_serial = parallel_and_serial(_packed_linear_body)


@njit(cache=True)
def static_codes_kernel(x, scale, zero, qmin, qmax, xd, rowsum):
    """The packed kernel's input for a static activation grid, in one pass over x (M, K):
    xd[m, k] = clamp(rint(x / S_x + Z_x), qmin, qmax) - Z_x (int16; ``uniform.quantize_static_reference``'s
    qx - zx, float64 arithmetic as there) and rowsum[m] = sum_k xd[m, k]. False at once on a NaN or inf."""
    for m in range(x.shape[0]):
        s = 0
        for k in range(x.shape[1]):
            v = np.float64(x[m, k])
            if not np.isfinite(v):
                return False
            d = np.int16(min(max(np.rint(v / scale + zero), qmin), qmax) - zero)
            xd[m, k] = d
            s += d
        rowsum[m] = s
    return True
