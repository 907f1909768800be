"""The one-row codebook matmul on AVX-512: a codebook of at most 16 entries in one zmm register,
looked up for 16 weights at once by ``vpermps``.

Computes ``codebook.py``'s product (Han et al. 2016, Deep Compression, Sec. 3: W[k, n] =
codebook[idx[k, n]]) for one row of x, the decoding case:

    y[n] = sum_k x[k] codebook[idx[k, n]]

A 4-bit k-means codebook (k <= 16 shared values) is 16 floats, one zmm register, and ``vpermps``
reads the low 4 bits of each lane's index: 16 weights are dequantized by one instruction where
``codebook.py``'s kernel does one scalar gather per weight. Per 16 weights and row k: one 16-byte
load of indices widened to int32, one ``vpermps``, one multiply and one add into a register
accumulator; W is never stored, not even a tile of it.

Layout (``pack_blocks``): idx (K, N) -> (NB, K, 64) uint8, blocks of 64 output columns, so a
block streams its indices contiguously along k (on the (K, N) layout each k was a new 4 KB page
and the kernel ran at a quarter of the speed); pad columns get index 0 and are cut off.

Out-of-range indices: entries k..15 of the register table are NaN (as in ``codebook.py``), and
indices of 16 and more, which ``vpermps`` would wrap, are caught by an OR of every index read
(``seen``): the wrapper then raises. Float32 products and sums, summed along k per column in order
(no FMA contraction), so it agrees with x @ W within ``codebook.py``'s bound 2 gamma_K (|x| @ |W|).

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
# K N below this runs on one thread (one / two threads: 4096x1024 372 / 410 us, 4096^2 1242 / 985 us)
SERIAL_WORK = 1 << 23


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


def codebook_gemv(x_row, blocks, table, N):
    """(y (N,), out_of_range) for one row x_row (K,) float32; ``table`` float32 (16,): the codebook
    padded with NaN; out_of_range: some index was 16 or more. Small layers run on one thread: a
    parallel region costs 60-130 us to start on this machine."""
    kernel = _gemv_kernel if blocks.shape[1] * N >= SERIAL_WORK else _gemv_kernel_serial
    out, out_of_range = kernel(x_row, blocks, table)
    return out[:N], out_of_range


@intrinsic
def _block(typingctx, table, blocks, x, b, out, seen):
    """out[64 b : 64 b + 64] = sum_k x[k] table[blocks[b, k, :]]; seen[b] |= every index read."""
    arrays = (table, blocks, x, out, seen)
    if not (all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)
            and [a.dtype for a in arrays] == [types.float32, types.uint8, types.float32, types.float32, types.int32]):
        return None

    def codegen(context, builder, sig, args):
        ta, ba, xa, oa, sa = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 1, 2, 4, 5))
        bv = context.cast(builder, args[3], sig.args[3], types.intp)
        intp = context.get_value_type(types.intp)

        def const(i):
            return ir.Constant(intp, i)
        K = cgutils.unpack_tuple(builder, ba.shape, 3)[1]
        permps = vpermps(builder)
        codebook = builder.load(builder.bitcast(ta.data, F32X16.as_pointer()), align=4)
        seen_ptr = builder.gep(builder.bitcast(sa.data, I32X16.as_pointer()), [bv])
        seen_acc = cgutils.alloca_once_value(builder, builder.load(seen_ptr, align=4))
        accs = [cgutils.alloca_once_value(builder, ir.Constant(F32X16, [0.0] * 16)) for _ in range(COLS // 16)]
        block = builder.gep(builder.bitcast(ba.data, I8X16.as_pointer()), [builder.mul(bv, builder.mul(K, const(4)))])
        x_ptr = builder.bitcast(xa.data, ir.FloatType().as_pointer())
        with cgutils.for_range(builder, K) as loop:
            k = loop.index
            xk = builder.insert_element(ir.Constant(F32X16, ir.Undefined), builder.load(builder.gep(x_ptr, [k])),
                                        ir.Constant(ir.IntType(32), 0))
            xk = builder.shuffle_vector(xk, xk, ir.Constant(I32X16, None))              # x[k] in 16 lanes
            for r, acc in enumerate(accs):
                indices = builder.zext(builder.load(builder.gep(block, [builder.add(builder.mul(k, const(4)),
                                                                                   const(r))]), align=1), I32X16)
                builder.store(builder.or_(builder.load(seen_acc), indices), seen_acc)
                weights = builder.call(permps, [codebook, indices])                    # W[k, 16 columns]
                # y[n] += x[k] codebook[idx[k, n]]
                builder.store(builder.fadd(builder.load(acc), builder.fmul(xk, weights)), acc)
        out_ptr = builder.bitcast(oa.data, ir.FloatType().as_pointer())
        for r, acc in enumerate(accs):
            column = builder.add(builder.mul(bv, const(COLS)), const(16 * r))
            target = builder.bitcast(builder.gep(out_ptr, [column]), F32X16.as_pointer())
            builder.store(builder.load(acc), target, align=4)
        builder.store(builder.load(seen_acc), seen_ptr, align=4)
        return context.get_dummy_value()
    return types.void(table, blocks, x, b, out, seen), codegen


def _gemv_body(x, blocks, table):
    NB = blocks.shape[0]
    out, seen = np.empty(NB * COLS, np.float32), np.zeros((NB, TABLE), np.int32)
    for b in prange(NB):
        _block(table, blocks, x, b, out, seen)
    every_index = 0
    for b in range(NB):
        for lane in range(TABLE):
            every_index |= seen[b, lane]
    return out, every_index >= TABLE


_gemv_kernel, _gemv_kernel_serial = parallel_and_serial(_gemv_body)
