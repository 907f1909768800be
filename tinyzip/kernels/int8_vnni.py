"""The AVX-512 VNNI int8 microkernel: vpdpbusd on pre-packed weights, through a Numba ``@intrinsic``.

Computes the same Eq. (7) product as ``int8.py``'s other kernels (Jacob et al. 2018,
arXiv:1712.05877), on the layout ``pack_vnni`` makes: Wv (ceil(N/16), ceil(K/4), 64) int8,
Wv[b, j, 4c + i] = W_t[16b + c, 4j + i] (16 output columns x 4 consecutive k per 64 bytes, zero
padded). The x86 instruction vpdpbusd (AVX512_VNNI) multiplies unsigned by signed bytes and adds
each group of four products to an int32 lane, without saturation:

    dpbusd(acc, u, w)[c] = acc[c] + sum_{i<4} u[4c + i] w[4c + i]        (u uint8, w int8)

The activation codes qx are signed (-127..127, ``int8.py``'s per-row symmetric quantizer), so the
kernel feeds u = qx + 128 (qx's sign bit flipped: one vpxord per row and k-quad) and takes the
offset back exactly by starting each accumulator at minus 128 times its column sum of W
(``accumulator_start``, computed once per weight):

    -128 colsum[n] + sum_k (qx[m, k] + 128) W_t[n, k] = sum_k qx[m, k] W_t[n, k]

The int32 lanes wrap (two's complement), and so does 128 colsum[n]; the result is exact whenever
the true sum fits int32, the bound ``int8.py`` already enforces. Padding: W is zero there, so the
padded qx (0, fed as 128) adds nothing.

One instruction does 64 multiply-adds, against 16 for vpmaddwd on ymm (``int8_avx2.py``). Register
tile: 4 rows x 4 blocks of 16 columns = 16 zmm accumulators (of 32); k blocked by 64 quads so 4
rows x 256 B of x and 4 x 4 KB of weights stay in L1. ``HAS_VNNI`` is False without AVX512_VNNI
or when NUMBA_CPU_NAME names another target; callers then keep the AVX2 (or portable) kernel.

The epilogue is the AVX2 path's (``int8_avx2.dequantize_columns``): y = float32((sx[m] sw[n])
(acc - zw[n] rowsum[m]) + bias[n]) in float64, no fastmath, so the result equals
``int8_linear_reference`` bit for bit.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from tinyzip.kernels import parallel_and_serial
from tinyzip.kernels.int8_avx2 import dequantize_columns, host_cpu_has


HAS_VNNI = host_cpu_has("avx512vnni")
# From this reduction length the kernel beats OpenBLAS sgemm at every batch (2 threads, Zen 4,
# 128-1920 rows: K >= 1024 2.5-4.3x; K = 512 1.2-2.2x; K = 128 0.75x at 1920 x 128 x 512, where
# writing and re-reading the int32 accumulator costs more than the product): no float fallback.
EVERY_BATCH_K = 1024
_MR, _NR = 4, 4  # register tile: 4 rows x 4 blocks of 16 columns = 16 zmm accumulators (of 32)
_KC = 64         # k-quads per cache block: 4 rows x 256 B of x + 4 x 4 KB of weights stay in L1
_COLS = 16       # output columns per block (int32 lanes of a zmm)
_V16I32 = ir.VectorType(ir.IntType(32), 16)


def pack_vnni(W_t):
    """The VNNI layout: W_t (N, K) int8 -> Wv (ceil(N/16), ceil(K/4), 64) int8 with
    Wv[b, j, 4c + i] = W_t[16b + c, 4j + i], zero where 16b + c >= N or 4j + i >= K."""
    if not isinstance(W_t, np.ndarray) or W_t.dtype != np.int8 or W_t.ndim != 2 or W_t.size == 0:
        raise TypeError(f"W_t must be a non-empty 2-D int8 ndarray, got {getattr(W_t, 'dtype', type(W_t).__name__)} "
                        f"{getattr(W_t, 'shape', '')}")
    N, K = W_t.shape
    NB, K4 = -(-N // _COLS), -(-K // 4)
    padded = np.zeros((_COLS * NB, 4 * K4), np.int8)
    padded[:N, :K] = W_t
    return np.ascontiguousarray(padded.reshape(NB, _COLS, K4, 4).transpose(0, 2, 1, 3)).reshape(NB, K4, 4 * _COLS)


def accumulator_start(W_t):
    """-128 sum_k W_t[n, k] for each output column n, as wrapping int32, zero-padded to 16 ceil(N/16):
    where the kernel's accumulators start, so that the offset of x comes off exactly."""
    start = np.zeros(_COLS * -(-W_t.shape[0] // _COLS), np.int32)
    start[:W_t.shape[0]] = (-128 * W_t.astype(np.int64).sum(axis=1)).astype(np.int32)
    return start


def _make_tile(MR, NR):
    """An intrinsic tile(xq, wv, acc, start, m0, b0, k0, k1): for r < MR, c < NR
    acc[m0 + r, 16 (b0 + c) : 16 (b0 + c + 1)] (+)= sum_{j = k0}^{k1 - 1} dpbusd(xq[m0 + r, j] ^ 0x80808080,
    wv[b0 + c, j]), starting from start[16 (b0 + c) : ...] when k0 == 0 (else from acc). xq holds 4
    int8 codes per int32."""
    @intrinsic
    def tile(typingctx, xq, wv, acc, start, m0, b0, k0, k1):
        if not (isinstance(xq, types.Array) and xq.dtype == types.int32 and wv.dtype == types.int8
                and acc.dtype == types.int32 and start.dtype == types.int32):
            return None

        def codegen(context, builder, sig, args):
            xa, wa, aa, sa = (context.make_array(t)(context, builder, a) for t, a in zip(sig.args[:4], args[:4]))
            m0v, b0v, k0v, k1v = (context.cast(builder, a, t, types.intp) for t, a in zip(sig.args[4:], args[4:]))
            intp = context.get_value_type(types.intp)

            def const(i):
                return ir.Constant(intp, i)
            K4 = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
            NP = cgutils.unpack_tuple(builder, aa.shape, 2)[1]
            dpbusd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V16I32, [_V16I32, _V16I32, _V16I32]), "llvm.x86.avx512.vpdpbusd.512")
            sign_bits = ir.Constant(ir.IntType(32), 0x80808080 - (1 << 32))     # qx + 128 = qx ^ 0x80, per byte
            x_rows = [builder.gep(xa.data, [builder.mul(builder.add(m0v, const(r)), K4)]) for r in range(MR)]
            w_base = builder.bitcast(wa.data, _V16I32.as_pointer())  # wv[b, j] is 64 bytes, one zmm
            w_blocks = [builder.gep(w_base, [builder.mul(builder.add(b0v, const(c)), K4)]) for c in range(NR)]
            out = [[builder.bitcast(builder.gep(aa.data, [builder.add(builder.mul(builder.add(m0v, const(r)), NP),
                                                                      builder.mul(builder.add(b0v, const(c)),
                                                                                  const(_COLS)))]),
                                    _V16I32.as_pointer()) for c in range(NR)] for r in range(MR)]
            first = builder.icmp_signed("==", k0v, const(0))
            starts = [builder.load(builder.bitcast(builder.gep(sa.data, [builder.mul(builder.add(b0v, const(c)),
                                                                                      const(_COLS))]),
                                                   _V16I32.as_pointer()), align=4) for c in range(NR)]
            accs = [[cgutils.alloca_once(builder, _V16I32) for c in range(NR)] for r in range(MR)]
            for r in range(MR):
                for c in range(NR):
                    builder.store(builder.select(first, starts[c], builder.load(out[r][c], align=4)), accs[r][c])
            with cgutils.for_range_slice(builder, k0v, k1v, const(1)) as (j, _):
                w = [builder.load(builder.gep(w_blocks[c], [j]), align=1) for c in range(NR)]
                for r in range(MR):
                    xj = builder.xor(builder.load(builder.gep(x_rows[r], [j]), align=4), sign_bits)
                    xv = builder.insert_element(ir.Constant(_V16I32, ir.Undefined), xj, ir.Constant(ir.IntType(32), 0))
                    xv = builder.shuffle_vector(xv, xv, ir.Constant(_V16I32, None))      # broadcast to 16 lanes
                    for c in range(NR):
                        builder.store(builder.call(dpbusd, [builder.load(accs[r][c]), xv, w[c]]), accs[r][c])
            for r in range(MR):
                for c in range(NR):
                    builder.store(builder.load(accs[r][c]), out[r][c], align=4)
            return context.get_dummy_value()
        return types.void(xq, wv, acc, start, m0, b0, k0, k1), codegen
    return tile


_tile_full, _tile_row, _tile_col, _tile_one = _make_tile(_MR, _NR), _make_tile(1, _NR), _make_tile(_MR, 1), \
    _make_tile(1, 1)


@njit(cache=True)
def _vnni_group(xq, wv, acc, start, b0, kc):
    """acc[:, 16 b0 : 16 (b0 + _NR)] = start + the int32 sums of (qx + 128) W for all rows, kc k-quads at a time."""
    M, K4 = xq.shape
    nb = min(_NR, wv.shape[0] - b0)
    for k0 in range(0, K4, kc):
        k1 = min(K4, k0 + kc)
        for b in range(b0, b0 + nb, nb if nb == _NR else 1):
            m = 0
            while m + _MR <= M:
                if nb == _NR:
                    _tile_full(xq, wv, acc, start, m, b, k0, k1)
                else:
                    _tile_col(xq, wv, acc, start, m, b, k0, k1)
                m += _MR
            while m < M:
                if nb == _NR:
                    _tile_row(xq, wv, acc, start, m, b, k0, k1)
                else:
                    _tile_one(xq, wv, acc, start, m, b, k0, k1)
                m += 1


def _vnni_linear_body(xq, wv, start, sx, sw, zw, rowsum, bias, acc, y):
    """y = float32((sx[m] sw[n]) (acc - zw[n] rowsum[m]) + bias[n]); acc is (M, 16 ceil(N / 16))
    int32 scratch, xq the (M, ceil(K/4)) int32 view of the int8 codes, start ``accumulator_start``."""
    M, N = y.shape
    kc = _KC if M >= _MR else xq.shape[1]  # under _MR rows x is read once: stream W without breaks
    for g in prange((wv.shape[0] + _NR - 1) // _NR):
        b0 = g * _NR
        _vnni_group(xq, wv, acc, start, b0, kc)
        dequantize_columns(acc, sx, sw, zw, rowsum, bias, y, _COLS * b0, min(N, _COLS * (b0 + _NR)))


vnni_linear_kernel, vnni_linear_kernel_serial = parallel_and_serial(_vnni_linear_body)
