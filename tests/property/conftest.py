"""Hypothesis profiles for the property tests, chosen with BBP_HYPOTHESIS_PROFILE.

``default`` (CI): 200 examples per property, derandomized so every run draws the same
examples, no example database, no deadline. ``thorough``: random, 2000 examples per
property (BBP_HYPOTHESIS_EXAMPLES overrides), with the example database under
``.hypothesis/`` so a failure found once is replayed first next time. ``dev``: a quick
derandomized smoke run of 10 examples.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

# no "explain" phase: its coverage report of the failing example is mostly NumPy's lines
_COMMON = dict(deadline=None, phases=[p for p in Phase if p != Phase.explain],
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# "thorough" and "dev" first and with their own parents: registering "default" replaces
# the settings every later profile would inherit from (derandomize, no database)
settings.register_profile("thorough", parent=settings.get_profile("default"), derandomize=False,
                          print_blob=True, **_COMMON,
                          max_examples=int(os.environ.get("BBP_HYPOTHESIS_EXAMPLES", 2000)))
settings.register_profile("dev", max_examples=10, derandomize=True, database=None, **_COMMON)
settings.register_profile("default", max_examples=200, derandomize=True, database=None,
                          print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("BBP_HYPOTHESIS_PROFILE", "default"))
