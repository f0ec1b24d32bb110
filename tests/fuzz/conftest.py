"""Hypothesis profiles of the fuzz suite: "ci" (small, reproducible, in `make test`) and "fuzz" (`make fuzz`).

`DRIMBOX_FUZZ_PROFILE` picks the profile (default "ci"); `DRIMBOX_FUZZ_EXAMPLES` sets the number of cases
per target (default 100 in "ci", about 15 s for the whole suite here; 2000 in "fuzz"). Slow targets (a DICOM association or an HTTP round trip per
case) run a fraction of it, see `tests.fuzz.support.budget`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.fuzz.support import examples

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
            HealthCheck.large_base_example]  # fmt: skip

# CI: derandomised so a red build is reproducible from the log alone; no database written into the tree.
settings.register_profile(
    "ci", max_examples=examples("ci"), derandomize=True, database=None, deadline=None,
    suppress_health_check=_SLOW_OK, print_blob=True,
)  # fmt: skip
# The long run: random, and what it finds is replayed first next time (.hypothesis/ is git-ignored).
settings.register_profile(
    "fuzz", max_examples=examples("fuzz"), database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
    deadline=None, suppress_health_check=_SLOW_OK, print_blob=True,
)  # fmt: skip
settings.load_profile(os.environ.get("DRIMBOX_FUZZ_PROFILE", "ci"))
