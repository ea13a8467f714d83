"""Run by tests/test_distributed.py under torchrun (2 processes, gloo): `clusterssl pretrain
--method carl` in each process, as the verb runs there, with every random prototype partition
CARL draws recorded; each process saves its draws to <out>/rank<r>.pt for the test to compare."""
from __future__ import annotations

import os
import sys

import torch

from clusterssl import cli
from clusterssl.methods.carl import CARL


def main(params_file: str, out: str) -> int:
    drawn: list[torch.Tensor | None] = []
    draw = CARL.random_blocks

    def recording(self, device):
        blocks = draw(self, device)
        drawn.append(None if blocks is None else blocks.detach().cpu().clone())
        return blocks

    CARL.random_blocks = recording
    code = cli.main(["--params", params_file, "pretrain", "--method", "carl", "--seed", "0", "--threads", "1", "--no-progress"])
    torch.save({"exit_status": code, "blocks": drawn}, os.path.join(out, f"rank{os.environ['RANK']}.pt"))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
