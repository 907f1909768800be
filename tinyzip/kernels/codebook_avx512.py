"""The codebook matmul on AVX-512: a codebook of at most 16 entries in one zmm register, looked
up for 16 weights at once by ``vpermps``, inside a register tile of rows x 64 columns.

Computes ``codebook.py``'s product (Han et al. 2016, Deep Compression, Sec. 3: W[k, n] =
codebook[idx[k, n]]):

    y[m, n] = sum_k x[m, k] codebook[idx[k, n]]

A 4-bit k-means codebook (k <= 16 shared values) is 16 floats, one zmm register, and ``vpermps``
reads the low 4 bits of each lane's index: 16 weights are dequantized by one instruction where
``codebook.py``'s kernel does one scalar gather per weight. W is never stored, not even a tile of
it: per k, the 64 weights of a block (four 16-byte loads of indices, widened to int32, four
``vpermps``) go straight into the fused multiply-adds of MR rows of x (``_tile``: MR x 4 zmm
accumulators, MR = 6, 4 or 1; 6 x 4 + 4 weights + 1 broadcast of the 32 registers).

Layout (``pack_blocks``): idx (K, N) -> (NB, K, 64) uint8, blocks of 64 output columns, so a
block streams its indices contiguously along k (on the (K, N) layout each k was a new 4 KB page
and the one-row kernel ran at a quarter of the speed); pad columns get index 0 and are cut off.

Out-of-range indices: entries k..15 of the register table are NaN (as in ``codebook.py``), and
indices of 16 and more, which ``vpermps`` would wrap, are caught by an OR of every index read
(``seen``): the wrapper then raises. Float32 fused multiply-adds along k, per column in order, so
the result agrees with x @ W within ``codebook.py``'s bound 2 gamma_K (|x| @ |W|).

``HAS_AVX512`` (``lut_gemv_avx512``'s, with the vector types and ``vpermps``) is False without
AVX-512F or when NUMBA_CPU_NAME names another target; ``codebook.py`` then keeps its own kernel.
"""
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from tinyzip.kernels import parallel_and_serial
from tinyzip.kernels.lut_gemv_avx512 import HAS_AVX512  # noqa: F401  (callers ask this module)
from tinyzip.kernels.lut_gemv_avx512 import F32X16, I8X16, I32X16, vpermps

TABLE = 16        # codebook entries one zmm register holds
COLS = 64         # output columns per block: 4 zmm accumulators
# M K N below this runs on one thread (vs NumPy, one / two threads: 1024^2 at batch 8 1.21 / 1.05x,
# 128x512 at 128 0.71 / 0.60x; 4096^2 at batch 1 2.23 / 2.86x, 1024^2 at 32 0.74 / 1.14x)
SERIAL_WORK = 1 << 24


def pack_blocks(idx):
    """idx (K, N) uint8 -> (ceil(N / 64), K, 64) uint8 with blocks[b, k, c] = idx[k, 64 b + c], 0 past N."""
    if not isinstance(idx, np.ndarray) or idx.dtype != np.uint8 or idx.ndim != 2 or idx.size == 0:
        raise TypeError(f"idx must be a non-empty 2-D uint8 ndarray, got {getattr(idx, 'dtype', type(idx).__name__)} "
                        f"{getattr(idx, 'shape', '')}")
    K, N = idx.shape
    NB = -(-N // COLS)
    padded = np.zeros((K, NB * COLS), np.uint8)
    padded[:, :N] = idx
    return np.ascontiguousarray(padded.reshape(K, NB, COLS).transpose(1, 0, 2))


def codebook_matmul_blocks(x, blocks, table, N):
    """(y (M, N), out_of_range) for x (M, K) float32; ``table`` float32 (16,): the codebook padded
    with NaN; out_of_range: some index was 16 or more. Small products run on one thread: a
    parallel region costs 60-130 us to start on this machine."""
    kernel = _matmul_kernel if x.shape[0] * blocks.shape[1] * N >= SERIAL_WORK else _matmul_kernel_serial
    out, out_of_range = kernel(x, blocks, table)
    return np.ascontiguousarray(out[:, :N]), out_of_range


def _make_tile(MR):
    """An intrinsic tile(table, blocks, x, m0, b, out, seen): out[m0 + r, 64 b : 64 b + 64] =
    sum_k x[m0 + r, k] table[blocks[b, k, :]] for r < MR; seen[b] |= every index read."""
    @intrinsic
    def tile(typingctx, table, blocks, x, m0, b, out, seen):
        arrays = (table, blocks, x, out, seen)
        if not (all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)
                and [a.dtype for a in arrays] == [types.float32, types.uint8, types.float32, types.float32,
                                                  types.int32]):
            return None

        def codegen(context, builder, sig, args):
            ta, ba, xa, oa, sa = (context.make_array(sig.args[i])(context, builder, args[i])
                                  for i in (0, 1, 2, 5, 6))
            m0v, bv = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (3, 4))
            intp = context.get_value_type(types.intp)

            def const(i):
                return ir.Constant(intp, i)
            K = cgutils.unpack_tuple(builder, ba.shape, 3)[1]
            NP = cgutils.unpack_tuple(builder, oa.shape, 2)[1]
            permps = vpermps(builder)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(F32X16, [F32X16] * 3),
                                                 "llvm.fma.v16f32")
            codebook = builder.load(builder.bitcast(ta.data, F32X16.as_pointer()), align=4)
            seen_ptr = builder.gep(builder.bitcast(sa.data, I32X16.as_pointer()), [bv])
            seen_acc = cgutils.alloca_once_value(builder, builder.load(seen_ptr, align=4))
            acc = [[cgutils.alloca_once_value(builder, ir.Constant(F32X16, [0.0] * 16)) for _ in range(4)]
                   for _ in range(MR)]
            block = builder.gep(builder.bitcast(ba.data, I8X16.as_pointer()),
                                [builder.mul(bv, builder.mul(K, const(4)))])          # blocks[b] as <16 x i8>
            x_ptr = builder.bitcast(xa.data, ir.FloatType().as_pointer())
            x_rows = [builder.gep(x_ptr, [builder.mul(builder.add(m0v, const(r)), K)]) for r in range(MR)]
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                weights = []                                                   # W[k, 64 b + 16 c : ...]
                for c in range(4):
                    index = builder.gep(block, [builder.add(builder.mul(k, const(4)), const(c))])
                    index = builder.zext(builder.load(index, align=1), I32X16)
                    builder.store(builder.or_(builder.load(seen_acc), index), seen_acc)
                    weights.append(builder.call(permps, [codebook, index]))
                for r in range(MR):
                    xk = builder.load(builder.gep(x_rows[r], [k]))
                    xk = builder.insert_element(ir.Constant(F32X16, ir.Undefined), xk, ir.Constant(ir.IntType(32), 0))
                    xk = builder.shuffle_vector(xk, xk, ir.Constant(I32X16, None))      # x[m0 + r, k] in 16 lanes
                    for c in range(4):
                        # y[m, n] += x[m, k] codebook[idx[k, n]]
                        builder.store(builder.call(fma, [xk, weights[c], builder.load(acc[r][c])]), acc[r][c])
            out_ptr = builder.bitcast(oa.data, ir.FloatType().as_pointer())
            for r in range(MR):
                row = builder.gep(out_ptr, [builder.add(builder.mul(builder.add(m0v, const(r)), NP),
                                                        builder.mul(bv, const(COLS)))])
                for c in range(4):
                    target = builder.bitcast(builder.gep(row, [const(16 * c)]), F32X16.as_pointer())
                    builder.store(builder.load(acc[r][c]), target, align=4)
            builder.store(builder.load(seen_acc), seen_ptr, align=4)
            return context.get_dummy_value()
        return types.void(table, blocks, x, m0, b, out, seen), codegen
    return tile


_tile6, _tile4, _tile1 = _make_tile(6), _make_tile(4), _make_tile(1)


def _matmul_body(x, blocks, table):
    M, NB = x.shape[0], blocks.shape[0]
    out, seen = np.empty((M, NB * COLS), np.float32), np.zeros((NB, TABLE), np.int32)
    for b in prange(NB):
        m = 0
        while M - m >= 6 and M - m != 8:        # 6-row tiles, but 8 rows as two of 4 (not 6 + 1 + 1)
            _tile6(table, blocks, x, m, b, out, seen)
            m += 6
        while M - m >= 4:
            _tile4(table, blocks, x, m, b, out, seen)
            m += 4
        while m < M:
            _tile1(table, blocks, x, m, b, out, seen)
            m += 1
    every_index = 0
    for b in range(NB):
        for lane in range(TABLE):
            every_index |= seen[b, lane]
    return out, every_index >= TABLE


_matmul_kernel, _matmul_kernel_serial = parallel_and_serial(_matmul_body)
