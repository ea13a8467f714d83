"""The plain reference's recipe in this pipeline (studies/reference_recipe): each recipe's
interval over three seeds and their Welch difference."""
from __future__ import annotations

import pandas as pd
import pytest

from studies.reference_recipe import check
from studies.tests.helpers import write_scores


@pytest.mark.filterwarnings("ignore:Precision loss")  # the constant default rows, on purpose
def test_the_reference_check_gives_each_recipe_its_interval_and_their_welch_difference(tmp_path):
    reference, default = tmp_path / "reference", tmp_path / "default"
    for seed, linear in zip([0, 1, 2], [0.88, 0.89, 0.90]):
        write_scores(reference, "simclr", seed, linear)
        write_scores(default, "simclr", seed, 0.87)
        for root, seconds in ((reference, 360), (default, 300)):
            run = root / "runs" / "fashion_mnist" / "simclr" / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "history.csv").write_text(f"epoch,seconds\n1,{seconds / 2}\n2,{seconds / 2}\n")
    table = check.main(reference, default, tmp_path / "check.csv").splitlines()
    row = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    # reference 89 ± 1 (t(0.975, 2) / sqrt(3) = 2.48), default 87 ± 0: Welch's interval has the
    # reference's 2 degrees of freedom and its standard error
    assert row["linear"] == ("| linear | 88.00, 89.00, 90.00 | 89.00 [86.52, 91.48] | 87.00, 87.00, 87.00 | "
                             "87.00 [87.00, 87.00] | +2.00 [-0.48, +4.48] | 88.0 |")
    assert row["pretrain_minutes"].startswith("| pretrain_minutes | 6.00, 6.00, 6.00 |") and "| +1.00 [" in row["pretrain_minutes"]
    assert len(pd.read_csv(tmp_path / "check.csv")) == 6
    (reference / "metrics" / "fashion_mnist" / "simclr" / "seed2" / "knn.json").unlink()
    assert check.main(reference, default, tmp_path / "check.csv") == "missing runs: reference seed 2"
