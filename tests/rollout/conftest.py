"""Session fixtures for the rollout tests (helpers live in rollout_helpers.py)."""

from __future__ import annotations

import pytest
from rollout_helpers import make_engine, make_hf_model


@pytest.fixture(scope="session")
def llama():
    return make_hf_model("llama", tied=False)


@pytest.fixture(scope="session")
def llama_engine(llama):
    return make_engine(llama)
