"""Test-session set-up shared by every test module.

The mode is fixed before anything imports ``numba.cuda``: without a GPU (or with ``NUMBA_ENABLE_CUDASIM=1``) the
session runs Numba's CUDA simulator and the ``gpu`` tests skip, saying why; with a GPU the ``sim`` tests skip
(run them with ``NUMBA_ENABLE_CUDASIM=1 pytest -m sim``). PTX tests compile in a subprocess with the simulator off,
so they run in either mode.

Hypothesis uses a deterministic profile under CI (``CI`` set), a randomised one elsewhere.
"""

from __future__ import annotations

import os

from flashllm_nb._runtime import use_simulator_if_no_gpu

SIMULATOR = use_simulator_if_no_gpu()

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; this session runs Numba's CUDA simulator")
    skip_sim = pytest.mark.skip(reason="simulator test; a GPU is present (run with NUMBA_ENABLE_CUDASIM=1 -m sim)")
    for item in items:
        if "gpu" in item.keywords and SIMULATOR:
            item.add_marker(skip_gpu)
        if "sim" in item.keywords and not SIMULATOR:
            item.add_marker(skip_sim)
