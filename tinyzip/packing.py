"""Bit packing: b-bit unsigned codes <-> a dense uint8 byte string. NumPy only.

Every packed export in tinyzip (k-means indices, int4 values, ternary codes) stores its codes with
``pack_uint`` so that a b-bit tensor of n values takes exactly ``ceil(n * b / 8)`` bytes on disk.

Layout (fixed, so other implementations can read it): value ``i`` occupies bits
``[i*b, (i+1)*b)`` of the stream, least significant bit first; stream bit ``j`` is bit ``j % 8``
of byte ``j // 8`` (NumPy's ``bitorder="little"``). Example, b=4: values [0x1, 0x2] -> byte 0x21.
"""
import numpy as np


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits take: ceil(count * bits / 8)."""
    return (int(count) * int(bits) + 7) // 8


def _check_bits(bits) -> int:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    return int(bits)


def pack_uint(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes in [0, 2**bits) into a 1-D uint8 array of ``packed_nbytes(size, bits)``."""
    bits = _check_bits(bits)
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"pack_uint needs integer codes, got dtype {values.dtype}")
    flat = values.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= (1 << bits)):
        raise ValueError(f"codes must lie in [0, {1 << bits}) for bits={bits}, "
                         f"got range [{flat.min()}, {flat.max()}]")
    bit_planes = (flat[:, None] >> np.arange(bits)) & 1          # (n, bits), LSB first
    return np.packbits(bit_planes.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_uint(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_uint``: the first ``count`` codes, as uint8 (bits <= 8) or uint16."""
    bits = _check_bits(bits)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise TypeError(f"packed codes must be a 1-D uint8 array, got {packed.dtype} {packed.shape}")
    if count < 0 or packed.size != packed_nbytes(count, bits):
        raise ValueError(f"{packed.size} packed bytes do not hold {count} codes of {bits} bits "
                         f"(expected {packed_nbytes(count, max(count, 0) and bits)})")
    stream = np.unpackbits(packed, bitorder="little")[: count * bits]
    bit_planes = stream.reshape(count, bits).astype(np.uint16)    # (n, bits)
    codes = (bit_planes << np.arange(bits, dtype=np.uint16)).sum(axis=1, dtype=np.uint16)
    return codes.astype(np.uint8) if bits <= 8 else codes
