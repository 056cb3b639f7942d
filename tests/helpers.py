"""Assertions shared by the test modules (importable because pytest puts tests/ on sys.path)."""
import numpy as np

N_SIGMA = 4.0


def assert_stat(estimate, error, exact, what, n_sigma=N_SIGMA):
    """|estimate − exact| < n_sigma · error, with a valid (positive, finite) error."""
    assert error > 0 and np.isfinite(error), f"{what}: invalid error {error}"
    dev = abs(estimate - exact)
    assert dev < n_sigma * error, (
        f"{what}: {estimate:.6g} ± {error:.2g} vs exact {exact:.6g} ({dev / error:.1f} sigma)")
