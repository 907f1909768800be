"""tinyzip.packing: b-bit codes in a dense LSB-first byte stream."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hynp

from tinyzip.packing import pack_uint, packed_nbytes, unpack_uint


@st.composite
def codes_st(draw):
    bits = draw(st.integers(1, 16))
    codes = draw(hynp.arrays(np.int64, st.integers(0, 200), elements=st.integers(0, (1 << bits) - 1)))
    return codes, bits


@given(codes_st())
def test_pack_then_unpack_is_identity(case):
    codes, bits = case
    packed = pack_uint(codes, bits)
    np.testing.assert_array_equal(unpack_uint(packed, bits, codes.size), codes)


@given(codes_st())
def test_packed_size_is_ceil_of_n_times_bits_over_8(case):
    codes, bits = case
    assert pack_uint(codes, bits).nbytes == -(-codes.size * bits // 8) == packed_nbytes(codes.size, bits)


def test_layout_is_lsb_first_as_documented():
    # value i sits in stream bits [i*b, (i+1)*b), least significant bit first:
    # 4-bit [0x1, 0x2] -> 0b0010_0001; 1-bit [1,0,0,0,0,0,0,1] -> 0b1000_0001; 3-bit [7, 0, 1] ->
    # bits 1,1,1, 0,0,0, 1,0 -> 0b0100_0111.
    assert pack_uint(np.array([1, 2]), 4).tolist() == [0x21]
    assert pack_uint(np.array([1, 0, 0, 0, 0, 0, 0, 1]), 1).tolist() == [0x81]
    assert pack_uint(np.array([7, 0, 1]), 3).tolist() == [0x47, 0x00]


@pytest.mark.parametrize("bad_bits", [0, 17, -1])
def test_bits_out_of_range_is_an_error(bad_bits):
    with pytest.raises(ValueError, match="bits"):
        pack_uint(np.array([0]), bad_bits)


def test_code_out_of_range_float_codes_and_wrong_byte_count_are_errors():
    with pytest.raises(ValueError, match="codes must lie"):
        pack_uint(np.array([4]), 2)
    with pytest.raises(ValueError, match="codes must lie"):
        pack_uint(np.array([-1]), 2)
    with pytest.raises(TypeError, match="integer"):
        pack_uint(np.array([0.5]), 2)
    with pytest.raises(ValueError, match="do not hold"):
        unpack_uint(np.zeros(2, np.uint8), 4, 5)
    with pytest.raises(TypeError, match="uint8"):
        unpack_uint(np.zeros(2, np.int8), 4, 4)
