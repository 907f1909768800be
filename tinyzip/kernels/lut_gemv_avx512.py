"""BiQGEMM's one-row product on AVX-512: each mu = 8 table split into two 16-entry halves, each half
one zmm register, and looked up for 16 output units at once by ``vpermps``.

Paper: Jeon et al. (2020), "BiQGEMM", arXiv:2005.09904 (Eqs. (1)-(3) in ``lut_gemm.py``). A key
holds the signs of 8 consecutive inputs, bit j for input 8t + j. Its table entry is a sum over
those 8 inputs, so it splits into the sum over the first four (the key's low nibble) and over
the last four (its high nibble):

(1') T_t[key] = L_t[key & 15] + H_t[key >> 4]
     L_t[e] = sum_{j<4} (2 bit_j(e) - 1) x[8t + j],   H_t[e] = sum_{j<4} (2 bit_j(e) - 1) x[8t + 4 + j]
(2') L_t[0] = -sum_{j<4} x[8t + j];  L_t[e + 2^s] = L_t[e] + 2 x[8t + s] for e < 2^s  (H_t alike)
(3') y[n] = sum_i alpha[i, n] (sum_t L_t[key_{i,n,t} & 15] + sum_t H_t[key_{i,n,t} >> 4])

The keys are the ones ``lut_gemm.py`` stores (mu = 8, the paper's); only the tables change. A
16-float table is one zmm register, and ``vpermps`` (which reads the low 4 bits of each lane's
index) looks up 16 output units in one instruction, where the 256-entry tables take one scalar
load per key: per 16 units, plane and key, one 16-byte load of keys widened to int32, one shift,
two ``vpermps`` and two adds.

Layout (``pack_blocks``): keys (NB, Kb, q, 16 R) uint8, blocks of 16 R = 32 output units, so
one block's keys stream contiguously; ``tables`` (2 Kb, 16) float32, L_t at 2t and H_t at 2t + 1
(64 KB for K = 4096, built once per call, on the calling thread). The sums over t run per plane
in two zmm accumulators per 16 units (L and H, so 2 R q independent add chains), then Eq. (3')'s
alpha-weighted sum over planes. Float32 throughout; the sums are re-associated against the dense
product, within ``lut_gemm.py``'s tolerance of order K eps (|x| @ sum_i |alpha_i|).

``HAS_AVX512`` is False without AVX-512F or when NUMBA_CPU_NAME names another target; ``lut_gemm``
then keeps its scalar one-row kernel.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from tinyzip.kernels.int8_avx2 import host_cpu_has

HAS_AVX512 = host_cpu_has("avx512f")
# K N q below this runs on one thread (2 threads, Zen 4: a parallel region costs 60-130 us to start
# here; 4096x1024 one / two threads: q = 1 78 / 122 us, q = 3 229 / 187 us; 4096^2 q = 3 781 / 518 us)
SERIAL_WORK = 1 << 23
R = 2            # zmm blocks of 16 output units per register tile: 2 R q accumulators (q <= 3: 12 of 32)
MAX_Q = 3        # bit planes with a kernel here (``lut_gemm.use_lut`` sends q > 3 to the dense path)
F32X16, I32X16, I8X16 = ir.VectorType(ir.FloatType(), 16), ir.VectorType(ir.IntType(32), 16), \
    ir.VectorType(ir.IntType(8), 16)


def vpermps(builder):
    """The zmm ``vpermps`` for codegen: call(table, index) -> table[index[i] & 15] in lane i."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(F32X16, [F32X16, I32X16]),
                                          "llvm.x86.avx512.permvar.sf.512")


def pack_blocks(keys_nqt, alpha):
    """``lut_gemm``'s keys (N, q, Kb) uint8 and alpha (q, N) float32 -> keys (NB, Kb, q, 16 R) and
    alpha (q, 16 R NB), NB = ceil(N / 16 R); the pad units get key 0 and alpha 0 (output 0)."""
    N, q, Kb = keys_nqt.shape
    NB = -(-N // (16 * R))
    keys = np.zeros((NB * 16 * R, q, Kb), np.uint8)
    keys[:N] = keys_nqt
    alpha_padded = np.zeros((q, NB * 16 * R), np.float32)
    alpha_padded[:, :N] = alpha
    return np.ascontiguousarray(keys.reshape(NB, 16 * R, q, Kb).transpose(0, 3, 2, 1)), alpha_padded


def lut_gemv(x_padded, keys, alpha, N):
    """y (N,) = Eq. (3') for one row x_padded (8 Kb,) float32 (zero past K), on ``pack_blocks``' layout."""
    out = np.empty(alpha.shape[1], np.float32)
    _gemv_kernel(x_padded, keys, alpha, out)
    return out[:N]


@njit(cache=True)
def _build_tables(x, tables):
    """Eq. (2'): tables[2t + h] = the 16 signed sums of x[8t + 4h : 8t + 4h + 4], by doubling."""
    for t in range(tables.shape[0]):
        base = 4 * t
        # Eq. (2')
        tables[t, 0] = -(((x[base] + x[base + 1]) + x[base + 2]) + x[base + 3])
        for s in range(4):
            h = 1 << s
            two_x = np.float32(2.0) * x[base + s]
            for e in range(h):
                tables[t, h + e] = tables[t, e] + two_x


def _make_block(q):
    """An intrinsic block(tables, keys, alpha, out, b): Eq. (3') for the 16 R units of block b."""
    @intrinsic
    def block(typingctx, tables, keys, alpha, out, b):
        arrays = (tables, keys, alpha, out)
        if not (all(isinstance(a, types.Array) and a.layout == "C" for a in arrays)
                and [a.dtype for a in arrays] == [types.float32, types.uint8, types.float32, types.float32]):
            return None

        def codegen(context, builder, sig, args):
            ta, ka, aa, oa = (context.make_array(t)(context, builder, a) for t, a in zip(sig.args[:4], args[:4]))
            bv = context.cast(builder, args[4], sig.args[4], types.intp)
            intp = context.get_value_type(types.intp)

            def const(i):
                return ir.Constant(intp, i)
            Kb = cgutils.unpack_tuple(builder, ka.shape, 4)[1]
            NP = cgutils.unpack_tuple(builder, aa.shape, 2)[1]
            permps = vpermps(builder)
            table_ptr = builder.bitcast(ta.data, F32X16.as_pointer())              # tables[u] is one zmm
            block_keys = builder.gep(builder.bitcast(ka.data, I8X16.as_pointer()),
                                     [builder.mul(builder.mul(bv, Kb), const(q * R))])
            zero = ir.Constant(F32X16, [0.0] * 16)
            acc = {(r, i, h): cgutils.alloca_once_value(builder, zero) for r in range(R) for i in range(q)
                   for h in range(2)}
            four = ir.Constant(I32X16, [4] * 16)
            with cgutils.for_range(builder, Kb) as loop:
                t = loop.index
                low = builder.load(builder.gep(table_ptr, [builder.mul(t, const(2))]), align=4)
                high = builder.load(builder.gep(table_ptr, [builder.add(builder.mul(t, const(2)), const(1))]), align=4)
                for i in range(q):
                    for r in range(R):
                        k8 = builder.load(builder.gep(block_keys, [builder.add(builder.mul(t, const(q * R)),
                                                                               const(i * R + r))]), align=1)
                        k32 = builder.zext(k8, I32X16)
                        # Eq. (1'): vpermps reads the low 4 bits of each lane's index
                        for h, (tab, idx) in enumerate(((low, k32), (high, builder.lshr(k32, four)))):
                            a = acc[r, i, h]
                            builder.store(builder.fadd(builder.load(a), builder.call(permps, [tab, idx])), a)
            alpha_ptr = builder.bitcast(aa.data, ir.FloatType().as_pointer())
            out_ptr = builder.bitcast(oa.data, ir.FloatType().as_pointer())
            for r in range(R):
                unit = builder.add(builder.mul(bv, const(16 * R)), const(16 * r))
                y = zero
                for i in range(q):
                    a_i = builder.load(builder.bitcast(builder.gep(alpha_ptr, [builder.add(builder.mul(const(i), NP),
                                                                                            unit)]),
                                                       F32X16.as_pointer()), align=4)
                    # Eq. (3')
                    plane = builder.fadd(builder.load(acc[r, i, 0]), builder.load(acc[r, i, 1]))
                    y = builder.fadd(y, builder.fmul(a_i, plane))
                builder.store(y, builder.bitcast(builder.gep(out_ptr, [unit]), F32X16.as_pointer()), align=4)
            return context.get_dummy_value()
        return types.void(tables, keys, alpha, out, b), codegen
    return block


_block_q1, _block_q2, _block_q3 = _make_block(1), _make_block(2), _make_block(3)


@njit(parallel=True, cache=True)
def _gemv_kernel(x, keys, alpha, out):
    """out (16 R NB,) = Eq. (3') for x (8 Kb,): the tables on the calling thread, then the blocks in parallel."""
    tables = np.empty((2 * keys.shape[1], 16), np.float32)
    _build_tables(x, tables)
    q = keys.shape[2]
    for b in prange(keys.shape[0]):
        if q == 1:
            _block_q1(tables, keys, alpha, out, b)
        elif q == 2:
            _block_q2(tables, keys, alpha, out, b)
        else:
            _block_q3(tables, keys, alpha, out, b)
