"""A wider backbone at equal compute (2026-12-04) (studies/backbone/README.md)."""
