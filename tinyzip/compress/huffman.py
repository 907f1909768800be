"""Canonical Huffman coding of cluster indices and relative positions (Deep Compression, stage 3).

Papers
------
* David A. Huffman (1952). "A Method for the Construction of Minimum-Redundancy Codes".
  Proceedings of the IRE 40(9), 1098-1101. Repeatedly merge the two least frequent nodes; the
  depth of a symbol in the resulting tree is its code length; the code is an optimal prefix code.
* Song Han, Huizi Mao, William J. Dally (2016). "Deep Compression". ICLR 2016, arXiv:1510.00149,
  Sec. 4: the quantized-weight indices and the sparse relative indices are both biased, so Huffman
  coding them saves a further 20%-30% of storage; it is lossless and done offline after training.

Notation map
------------
symbols s_1..s_N (alphabet 0..n-1)  -> ``symbols`` int array; ``counts`` (n,) frequencies f_i
code length l_i, codeword           -> ``lengths`` uint8 (n,), 0 for an unused symbol; ``codes``

Equations (labels are ours: the paper's own numbering was not checked)
---------
Eq. (M)  merge step: take the two least frequent nodes a, b; f(new) = f(a) + f(b); the length of
         a symbol is its depth, l_i = depth(s_i)
Eq. (K)  Kraft: sum_i 2^-l_i <= 1 for any prefix code, with equality for a Huffman code of >= 2
         used symbols (a full binary tree)
Eq. (L)  mean length L = sum_i p_i l_i with p_i = f_i / N, and entropy H = -sum_i p_i log2 p_i;
         Huffman's L is the least of all prefix codes, and H <= L < H + 1

Algorithm and tie-breaks
------------------------
Huffman: nodes are ordered by (count, order key); a leaf's key is its symbol, the m-th merged node
gets key n + m. The two smallest nodes are merged into a new one. Each used symbol's length is its
depth. One used symbol gets length 1 (its codeword is "0"); an empty input gives all zeros.
Canonical code (only the lengths are stored): sort used symbols by (length, symbol); the first
gets code 0; each next code is (previous + 1) << (its length - previous length). So codes of one
length are consecutive integers and the code table is the n-byte ``lengths`` array.
Bit stream: codewords are written most significant bit first, one after another; stream bit j is
bit j % 8 of byte j // 8 (LSB-first bytes, as ``tinyzip.packing``); the last byte is zero-padded.

Export (``pack_kmeans_huffman``): the cluster-index stream and the relative-position (gap) stream
of a k-means tensor are coded separately, each with its own code table, and each only where the
stream plus its table is smaller than the fixed-width packing; the meta records which were coded.
Measured on a trained numbers-de model pruned to 80% (k = 15 + zero slot, 4-bit gaps): the index
streams take 3.3 bits per stored entry instead of 4, the gap streams 3.5 instead of 4.
"""
import heapq

import numpy as np

from tinyzip.compress.base import PackedTensor
from tinyzip.compress.kmeans import unpack_kmeans
from tinyzip.packing import pack_uint, unpack_uint

MAX_LENGTH = 57        # a window of MAX_LENGTH bits fits a uint64; Huffman needs > 57 only for > 1e11 symbols
_CHUNK = 1 << 16


def _check_counts(counts):
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        raise TypeError(f"counts must be integers, got dtype {counts.dtype}")
    if counts.min() < 0:
        raise ValueError(f"counts must be >= 0, got {counts.min()}")
    return counts.astype(np.int64)


def _check_lengths(lengths):
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0 or lengths.dtype != np.uint8:
        raise TypeError(f"lengths must be a non-empty 1-D uint8 array, got {lengths.dtype} {lengths.shape}")
    if lengths.max() > MAX_LENGTH:
        raise ValueError(f"code length {lengths.max()} exceeds {MAX_LENGTH} bits")
    return lengths.astype(np.int64)


def huffman_code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman (1952): code length of every symbol of the alphabet, uint8 (n,); 0 = unused."""
    counts = _check_counts(counts)
    n = counts.size
    used = np.flatnonzero(counts)
    lengths = np.zeros(n, dtype=np.int64)
    if used.size == 1:
        lengths[used] = 1
    if used.size <= 1:
        return lengths.astype(np.uint8)
    heap = [(int(counts[s]), int(s)) for s in used]            # (count, order key); key = node id
    heapq.heapify(heap)
    parent = {}
    next_key = n
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a] = parent[b] = next_key
        # Eq. (M)
        heapq.heappush(heap, (c1 + c2, next_key))
        next_key += 1
    depth = {next_key - 1: 0}
    for node in sorted(parent, reverse=True):                  # parents are created after children
        depth[node] = depth[parent[node]] + 1
    lengths[used] = [depth[int(s)] for s in used]
    if lengths.max() > MAX_LENGTH:
        raise ValueError(f"Huffman code length {lengths.max()} exceeds {MAX_LENGTH} bits")
    return lengths.astype(np.uint8)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codewords (uint64, read with their lengths) from the code lengths alone."""
    lengths = _check_lengths(lengths)
    top = int(lengths.max())
    # Eq. (K), in integers: sum_i 2^(top - l_i) <= 2^top
    if sum(1 << (top - int(v)) for v in lengths[lengths > 0]) > 1 << top:
        raise ValueError("code lengths violate the Kraft inequality: no prefix code has them")
    codes = np.zeros(lengths.size, dtype=np.uint64)
    order = np.lexsort((np.arange(lengths.size), lengths))     # by length, then symbol
    order = order[lengths[order] > 0]
    code, prev = -1, 0
    for s in order:
        code = (code + 1) << (int(lengths[s]) - prev) if code >= 0 else 0
        codes[s], prev = code, int(lengths[s])
    return codes


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """Concatenate the canonical codewords of ``symbols``: (uint8 stream, number of bits)."""
    lengths = _check_lengths(lengths)
    symbols = np.asarray(symbols)
    if not np.issubdtype(symbols.dtype, np.integer) or symbols.ndim != 1:
        raise TypeError(f"symbols must be a 1-D integer array, got {symbols.dtype} {symbols.shape}")
    if symbols.size and (symbols.min() < 0 or symbols.max() >= lengths.size
                         or np.any(lengths[symbols] == 0)):
        raise ValueError("a symbol is outside the alphabet or has no codeword (length 0)")
    codes = canonical_codes(lengths.astype(np.uint8))
    pieces = []
    for start in range(0, symbols.size, _CHUNK):
        s = symbols[start: start + _CHUNK]
        L, c = lengths[s][:, None], codes[s][:, None]             # (m, 1)
        j = np.arange(int(L.max()))[None, :]                      # (1, Lmax)
        shift = np.maximum(L - 1 - j, 0).astype(np.uint64)
        bits = ((c >> shift) & np.uint64(1)).astype(np.uint8)      # (m, Lmax), MSB first
        pieces.append(bits[j < L])                                 # row-major: codeword order kept
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)
    return np.packbits(stream, bitorder="little"), int(stream.size)


def huffman_decode(stream: np.ndarray, lengths: np.ndarray, count: int,
                   nbits: int | None = None) -> np.ndarray:
    """Read ``count`` symbols back from a canonical Huffman stream. int64 (count,)."""
    lengths = _check_lengths(lengths)
    stream = np.asarray(stream)
    if stream.dtype != np.uint8 or stream.ndim != 1:
        raise TypeError(f"stream must be a 1-D uint8 array, got {stream.dtype} {stream.shape}")
    bits = np.unpackbits(stream, bitorder="little").astype(np.uint64)
    nbits = bits.size if nbits is None else int(nbits)
    if not 0 <= nbits <= bits.size or count < 0:
        raise ValueError(f"stream of {bits.size} bits cannot hold nbits={nbits}, count={count}")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    codes = canonical_codes(lengths.astype(np.uint8))
    Lmax = int(lengths.max())
    if Lmax == 0:
        raise ValueError("no symbol has a codeword, but count > 0")
    bits = np.concatenate([bits[:nbits], np.zeros(Lmax, np.uint64)])
    window = np.zeros(nbits, dtype=np.uint64)                  # the next Lmax bits at every position
    for j in range(Lmax):
        window = (window << np.uint64(1)) | bits[j: j + nbits]
    sym_at = np.full(nbits, -1, dtype=np.int64)
    len_at = np.zeros(nbits, dtype=np.int64)
    for length in np.unique(lengths[lengths > 0]):
        members = np.flatnonzero(lengths == length)            # symbols of this length, ascending
        first = codes[members].min()                          # their codes are first, first+1, ...
        offset = (window >> np.uint64(Lmax - length)) - first
        hit = (sym_at < 0) & (window >> np.uint64(Lmax - length) >= first) & (offset < members.size)
        order = members[np.argsort(codes[members])]
        sym_at[hit] = order[offset[hit].astype(np.int64)]
        len_at[hit] = length
    out, p, sym_list, len_list = [], 0, sym_at.tolist(), len_at.tolist()
    for _ in range(count):
        if p >= nbits or len_list[p] == 0 or p + len_list[p] > nbits:
            raise ValueError(f"Huffman stream ends or is corrupt at bit {p} of {nbits}")
        out.append(sym_list[p])
        p += len_list[p]
    return np.array(out, dtype=np.int64)


def entropy_and_mean_length(counts: np.ndarray, lengths: np.ndarray) -> tuple[float, float]:
    """H = -sum p log2 p and L = sum p l over the used symbols (bits per symbol)."""
    counts = _check_counts(counts)
    p = counts[counts > 0] / counts.sum()
    # Eq. (L)
    return float(-(p * np.log2(p)).sum()), float((p * lengths[counts > 0]).sum())


# ---- export: Deep Compression stage 3 ---------------------------------------------------

STREAMS = {"indices": "index", "gaps": "gap"}     # kmeans array -> prefix of its Huffman arrays


def _width(meta, name):
    """(fixed width in bits, alphabet size) of the stream ``name`` of a kmeans tensor."""
    if name == "indices":
        return meta["index_bits"], meta["K"]
    return meta["gap_bits"], 1 << meta["gap_bits"]


def _code(values, alphabet, plain):
    """(stream, lengths, nbits) if the stream plus its code table is smaller than ``plain``, the
    fixed-width packing of the same values; else None."""
    lengths = huffman_code_lengths(np.bincount(values, minlength=alphabet))
    stream, nbits = huffman_encode(values, lengths)
    return (stream, lengths, nbits) if stream.nbytes + lengths.nbytes < plain.nbytes else None


def pack_kmeans_huffman(packed: PackedTensor) -> PackedTensor:
    """A "kmeans" PackedTensor -> "kmeans+huffman": indices and gaps Huffman-coded where it pays.

    Each stream (``indices`` and, if sparse, ``gaps``) is coded on its own, and only when its
    bit stream plus its code table (one length byte per symbol) is smaller than the fixed-width
    packing; otherwise the plain array is kept (small matrices, near-uniform indices).
    Layout: ``codebook`` float32 (K,); a coded stream ``s`` becomes ``{p}_stream`` uint8 and
    ``{p}_lengths`` uint8 (K, or 2^gap_bits for gaps), p = ``STREAMS[s]``, with ``{p}_nbits`` in
    ``meta``; a plain one stays as in "kmeans". ``meta`` = the kmeans meta + ``huffman``: the
    sorted names of the coded streams.
    """
    if packed.method != "kmeans":
        raise ValueError(f"pack_kmeans_huffman needs a 'kmeans' PackedTensor, got {packed.method!r}")
    meta, count = dict(packed.meta), packed.meta["count"]
    arrays, coded = {"codebook": packed.arrays["codebook"]}, []
    for name, prefix in STREAMS.items():
        if name not in packed.arrays:
            continue
        bits, alphabet = _width(meta, name)
        values = unpack_uint(packed.arrays[name], bits, count).astype(np.int64)
        result = _code(values, alphabet, packed.arrays[name])
        if result is None:
            arrays[name] = packed.arrays[name]
        else:
            arrays[f"{prefix}_stream"], arrays[f"{prefix}_lengths"], meta[f"{prefix}_nbits"] = result
            coded.append(name)
    meta["huffman"] = sorted(coded)
    return PackedTensor("kmeans+huffman", packed.shape, arrays, meta)


def kmeans_from_huffman(packed: PackedTensor) -> PackedTensor:
    """Inverse of ``pack_kmeans_huffman``: the "kmeans" PackedTensor, byte for byte."""
    if packed.method != "kmeans+huffman":
        raise ValueError(f"needs a 'kmeans+huffman' PackedTensor, got {packed.method!r}")
    meta, arrays = dict(packed.meta), packed.arrays
    coded = meta.pop("huffman", None)
    if not isinstance(coded, list) or not set(coded) <= set(STREAMS):
        raise ValueError(f"kmeans+huffman meta 'huffman' must list streams of {sorted(STREAMS)}, "
                         f"got {coded!r}")
    count = meta["count"]
    out = {"codebook": arrays["codebook"]}
    for name, prefix in STREAMS.items():
        if name in coded:
            values = huffman_decode(arrays[f"{prefix}_stream"], arrays[f"{prefix}_lengths"], count,
                                    meta.pop(f"{prefix}_nbits"))
            out[name] = pack_uint(values, _width(meta, name)[0])
        elif name in arrays:
            out[name] = arrays[name]
    return PackedTensor("kmeans", packed.shape, out, meta)


def unpack_kmeans_huffman(packed: PackedTensor) -> np.ndarray:
    """The dense float32 tensor of a "kmeans+huffman" PackedTensor."""
    return unpack_kmeans(kmeans_from_huffman(packed))
