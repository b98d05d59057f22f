"""Strict test configuration for tests and doctests: float64, no implicit rank promotion, one key."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    """The one root key of the test suite; tests split it, never search for a passing seed."""
    return jax.random.key(20250314)
