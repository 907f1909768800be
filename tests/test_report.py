"""report.py's pieces that are not the demo run itself (that runs in tests/test_cli.py)."""
import pytest
from hypothesis import given, strategies as st

from tinyzip.report import evenly_spaced


@given(st.integers(1, 300), st.integers(1, 300))
def test_evenly_spaced_subset_is_fixed_ordered_and_spans_the_split(size, n):
    pairs = [(f"s{i}", f"t{i}") for i in range(size)]
    subset = evenly_spaced(pairs, n)
    idx = [int(s[1:]) for s, _ in subset]
    assert len(subset) == min(n, size) and idx == sorted(set(idx))     # n distinct, order kept
    assert idx[0] == 0 and (n == 1 or idx[-1] == size - 1)              # first and last book both in
    assert subset == evenly_spaced(pairs, n)                            # a fixed subset


def test_evenly_spaced_rejects_nonpositive_n():
    with pytest.raises(ValueError, match="n_test"):
        evenly_spaced([("a", "b")] * 3, 0)
