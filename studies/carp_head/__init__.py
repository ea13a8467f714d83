"""CARP's head against ours: a diagnostic of CARL's 20-NN gap (2026-12-04, night) (studies/carp_head/README.md)."""
