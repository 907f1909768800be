"""Hypothesis profiles for the whole suite.

``deadline=None``: a Numba kernel's first call compiles for about two seconds, far past the
default 200 ms deadline. ``max_examples`` is bounded so the suite stays under ten minutes on two
cores. Under CI (``CI`` set) examples are derandomized so a run is reproducible.
"""
import os

import tinyzip  # noqa: F401  (first: sets the BLAS/Numba environment before NumPy loads)
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", deadline=None, max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ci", parent=settings.get_profile("dev"), derandomize=True, print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
