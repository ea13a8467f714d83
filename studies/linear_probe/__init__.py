"""Is the linear probe converged? (2026-12-04, night) (studies/linear_probe/README.md)."""
