"""Shared setup of the studies' tests: one torch thread, as in tests/conftest.py (the machine's
cores are shared with the other tests)."""
import torch

torch.set_num_threads(1)
