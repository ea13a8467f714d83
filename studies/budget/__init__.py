"""Twice the budget: fmnist-all at 20 epochs (2026-12-03 to 2026-12-04) (studies/budget/README.md)."""
