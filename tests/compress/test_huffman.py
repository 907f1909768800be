"""compress/huffman.py: Huffman (1952) canonical codes, as Deep Compression (arXiv 1510.00149,
Sec. 4) applies them to cluster indices and relative sparse indices."""
import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.compress import huffman as hf
from tinyzip.compress import kmeans as km
from tinyzip.packing import unpack_uint
from tests.strategies import matrix_st

counts_st = hynp.arrays(np.int64, st.integers(1, 40), elements=st.integers(0, 1000))


def _codewords(lengths):
    codes = hf.canonical_codes(lengths)
    return {s: format(int(codes[s]), f"0{int(lengths[s])}b") for s in range(lengths.size) if lengths[s]}


@given(counts_st.filter(lambda c: np.count_nonzero(c) >= 2))
def test_eqK_kraft_sum_is_exactly_one_for_two_or_more_symbols(counts):
    """A Huffman tree is full: sum 2^-l_i = 1 exactly (Fractions, no rounding)."""
    lengths = hf.huffman_code_lengths(counts)
    assert np.all((lengths > 0) == (counts > 0))
    assert sum(Fraction(1, 2 ** int(v)) for v in lengths if v) == 1


@given(counts_st.filter(lambda c: np.count_nonzero(c) >= 2))
def test_eqL_mean_length_is_within_one_bit_of_entropy(counts):
    """Shannon bound: H <= L < H + 1, with p_i = f_i / N (one symbol: H = 0, L = 1 by convention)."""
    lengths = hf.huffman_code_lengths(counts)
    p = counts[counts > 0] / counts.sum()
    H = float(-(p * np.log2(p)).sum())
    L = float((p * lengths[counts > 0]).sum())
    assert H - 1e-9 <= L < H + 1
    assert hf.entropy_and_mean_length(counts, lengths) == pytest.approx((H, L))


@given(counts_st)
def test_eqM_more_frequent_symbols_never_get_longer_codes(counts):
    lengths = hf.huffman_code_lengths(counts).astype(int)
    for i, j in itertools.permutations(np.flatnonzero(counts), 2):
        if counts[i] > counts[j]:
            assert lengths[i] <= lengths[j]


@given(hynp.arrays(np.int64, st.integers(2, 5), elements=st.integers(1, 50)))
def test_eqL_huffman_is_optimal_against_exhaustive_prefix_codes(counts):
    """Kraft-McMillan: a prefix code with lengths l exists iff sum 2^-l <= 1. Enumerate every
    length vector in 1..n-1 and compare the minimum total bits with Huffman's."""
    n = counts.size
    best = min(sum(int(c) * l for c, l in zip(counts, ls))
               for ls in itertools.product(range(1, n), repeat=n)
               if sum(Fraction(1, 2 ** l) for l in ls) <= 1)
    lengths = hf.huffman_code_lengths(counts)
    assert int((counts * lengths).sum()) == best


@given(counts_st.filter(lambda c: c.sum() > 0))
def test_canonical_codes_are_prefix_free_and_sorted(counts):
    """No codeword is a prefix of another; ordered by (length, symbol) they increase, and as
    bit strings they are in lexicographic order."""
    lengths = hf.huffman_code_lengths(counts)
    words = _codewords(lengths)
    for a, b in itertools.permutations(words.values(), 2):
        assert not b.startswith(a)
    ordered = sorted(words, key=lambda s: (lengths[s], s))
    seq = [words[s] for s in ordered]
    assert seq == sorted(seq)
    assert [int(hf.canonical_codes(lengths)[s]) for s in ordered] == sorted(
        int(hf.canonical_codes(lengths)[s]) for s in ordered)


@given(hynp.arrays(np.int64, st.integers(0, 300), elements=st.integers(0, 9)))
def test_encode_decode_round_trip_byte_for_byte(symbols):
    """decode(encode(x)) == x; re-encoding gives the same bytes; the stream length is sum l."""
    lengths = hf.huffman_code_lengths(np.bincount(symbols, minlength=10))
    stream, nbits = hf.huffman_encode(symbols, lengths)
    assert nbits == int(lengths.astype(int)[symbols].sum()) and stream.size == (nbits + 7) // 8
    decoded = hf.huffman_decode(stream, lengths, symbols.size, nbits)
    assert np.array_equal(decoded, symbols)
    assert np.array_equal(hf.huffman_encode(decoded, lengths)[0], stream)


def test_stream_is_msb_first_codewords_in_lsb_first_bytes():
    """Independent bit-string construction: concatenate codewords, bit j -> byte j//8, bit j%8."""
    symbols = np.array([0, 1, 2, 2, 2, 1, 0, 2])
    lengths = hf.huffman_code_lengths(np.bincount(symbols))
    words = _codewords(lengths)
    bits = "".join(words[s] for s in symbols)
    expected = [sum(int(b) << i for i, b in enumerate(bits[k: k + 8])) for k in range(0, len(bits), 8)]
    assert hf.huffman_encode(symbols, lengths)[0].tolist() == expected


def test_one_symbol_alphabet_has_code_length_one_and_ties_are_deterministic():
    lengths = hf.huffman_code_lengths(np.array([0, 7, 0]))
    assert lengths.tolist() == [0, 1, 0]
    stream, nbits = hf.huffman_encode(np.array([1] * 7), lengths)
    assert nbits == 7 and np.array_equal(hf.huffman_decode(stream, lengths, 7, nbits), [1] * 7)
    # equal counts: lower symbols merge first, so with 3 equal symbols symbol 2 gets the 1-bit code
    assert hf.huffman_code_lengths(np.array([5, 5, 5])).tolist() == [2, 2, 1]
    assert hf.huffman_code_lengths(np.zeros(4, np.int64)).tolist() == [0, 0, 0, 0]


def _huffman_bytes(values, alphabet):
    """Stream + table bytes of a Huffman code, from the lengths alone (sum f_i l_i bits)."""
    counts = np.bincount(values, minlength=alphabet)
    lengths = hf.huffman_code_lengths(counts).astype(np.int64)
    return (int((counts * lengths).sum()) + 7) // 8 + alphabet


@given(matrix_st(min_side=1, max_side=24, bound=3.0), st.integers(1, 15),
       st.one_of(st.none(), st.integers(1, 5)), st.integers(0, 99))
def test_kmeans_huffman_round_trip_and_dense_weights(W, k, gap_bits, seed):
    """kmeans -> kmeans+huffman -> kmeans is byte for byte; the dense tensor is unchanged; each
    stream is Huffman-coded exactly when its stream + code table beats the fixed width, so the
    coded tensor is never larger."""
    W = W * (np.random.default_rng(seed).random(W.shape) > 0.6)
    packed = km.pack_kmeans(W, k, gap_bits=gap_bits)
    coded = hf.pack_kmeans_huffman(packed)
    meta, count = packed.meta, packed.meta["count"]
    widths = {"indices": (meta["index_bits"], meta["K"]), "gaps": (gap_bits, 2 ** (gap_bits or 0))}
    for name in packed.arrays.keys() - {"codebook"}:
        bits, alphabet = widths[name]
        values = unpack_uint(packed.arrays[name], bits, count).astype(np.int64)
        pays = _huffman_bytes(values, alphabet) < packed.arrays[name].nbytes
        assert (name in coded.meta["huffman"]) == pays
    assert coded.nbytes <= packed.nbytes
    if "indices" in coded.meta["huffman"]:
        assert coded.arrays["index_lengths"].dtype == np.uint8
        assert coded.arrays["index_lengths"].size == packed.meta["K"]
    back = hf.kmeans_from_huffman(coded)
    assert back.meta == packed.meta and back.arrays.keys() == packed.arrays.keys()
    for name in packed.arrays:
        assert np.array_equal(back.arrays[name], packed.arrays[name])
    assert np.array_equal(hf.unpack_kmeans_huffman(coded), km.unpack_kmeans(packed))


def test_huffman_saves_bits_on_a_biased_index_distribution():
    """Deep Compression Sec. 4: biased indices and gaps code below their fixed widths."""
    rng = np.random.default_rng(0)
    W = rng.laplace(size=(64, 64)) * (rng.random((64, 64)) > 0.5)
    coded = hf.pack_kmeans_huffman(km.pack_kmeans(W, 15, gap_bits=3))
    assert coded.meta["huffman"] == ["gaps", "indices"]
    assert coded.meta["index_nbits"] < 4 * coded.meta["count"]
    assert coded.meta["gap_nbits"] < 3 * coded.meta["count"]


def test_small_matrix_keeps_the_plain_packing():
    """Four weights: any code table (K bytes) costs more than the 2 bytes of 4-bit indices."""
    W = np.array([[0.5, -1.0], [2.0, 0.25]])
    packed = km.pack_kmeans(W, 15, gap_bits=4)
    coded = hf.pack_kmeans_huffman(packed)
    assert coded.method == "kmeans+huffman" and coded.meta["huffman"] == []
    assert coded.nbytes == packed.nbytes and sorted(coded.arrays) == sorted(packed.arrays)
    assert np.array_equal(hf.unpack_kmeans_huffman(coded), W.astype(np.float32))


def test_bad_input_raises():
    good = hf.huffman_code_lengths(np.array([3, 1, 1]))
    stream, nbits = hf.huffman_encode(np.array([0, 1, 2]), good)
    for call, err in [
        (lambda: hf.huffman_code_lengths(np.array([1.0, 2.0])), TypeError),
        (lambda: hf.huffman_code_lengths(np.array([-1, 2])), ValueError),
        (lambda: hf.huffman_code_lengths(np.zeros(0, np.int64)), ValueError),
        (lambda: hf.huffman_encode(np.array([3]), good), ValueError),
        (lambda: hf.huffman_encode(np.array([0.5]), good), TypeError),
        (lambda: hf.huffman_encode(np.array([0]), good.astype(np.int64)), TypeError),
        (lambda: hf.huffman_encode(np.array([0]), np.array([60, 1], np.uint8)), ValueError),
        (lambda: hf.canonical_codes(np.array([1, 1, 1], np.uint8)), ValueError),
        (lambda: hf.huffman_decode(stream, good, 10, nbits), ValueError),
        (lambda: hf.huffman_decode(stream.astype(np.int8), good, 3, nbits), TypeError),
        (lambda: hf.huffman_decode(stream, good, 3, 99), ValueError),
        (lambda: hf.pack_kmeans_huffman(hf.PackedTensor("sparse", (1,), {}, {})), ValueError),
        (lambda: hf.kmeans_from_huffman(hf.PackedTensor("kmeans", (1,), {}, {})), ValueError),
        (lambda: hf.kmeans_from_huffman(hf.PackedTensor("kmeans+huffman", (1,), {}, {"huffman": ["x"]})),
         ValueError)]:
        with pytest.raises(err):
            call()
