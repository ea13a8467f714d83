"""Live training curves: each epoch's row of a run's history (the loss and each of its terms, the
learning rate, the online k-NN monitor and prototype use), written through dvclive as the epoch
ends, into the run's live folder (`paths.live_dir`). `dvc plots show` draws them and DVC's
VS Code extension follows them while the run trains. dvclive rather than TensorBoard event
files: DVC reads its plain TSV files as they are, for `dvc plots show/diff` and for experiments,
and any other tool (pandas, a shell) can read them mid-run.

The folder is all that is written (dvclive's layout: SUMMARY and one TSV per metric under
CURVES; the same seed writes the same bytes, as timings are left to history.csv). The Live used
here opens no DVC repository (dvclive would `dvc init` a Git repository that has none, and under
`dvc exp run` add the folder to Git), writes no dvc.yaml (dvc.yaml is generated:
clusterssl.dvcgen declares these files) and no report, and posts nothing to DVC Studio.
dvclive's own step signal for the VS Code extension, under `.dvc/tmp/` of the repository the
run starts in, is left as dvclive writes it.

A logging failure never stops training, nor changes it: it is said once on stderr and the run
goes on without curves (history.csv still gets every epoch)."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

SUMMARY = "metrics.json"  # dvclive's summary: the last epoch's values
CURVES = "plots/metrics"  # dvclive's folder of curves: <metric>.tsv, columns step and the metric
NOT_LOGGED = ("epoch", "seconds", "images_per_s")  # the step itself, and timings, which differ run to run


def _folder_only_live(folder: Path):
    """dvclive's Live, kept to its folder (see the module's docstring)."""
    from dvclive import Live

    class FolderOnlyLive(Live):
        def _init_dvc(self):  # no repository: nothing outside the folder, no `dvc init`, no Git
            pass

        def _init_studio(self):  # no DVC Studio: nothing leaves the machine
            self._studio_events_to_skip.update(("start", "data", "done"))

        def post_data_to_studio(self):
            pass

    return FolderOnlyLive(dir=str(folder), resume=False, report=None, save_dvc_exp=False, dvcyaml=None)


class LiveLog:
    """The live curves of one run; every call is guarded (`_guarded`): the first failure is said
    on stderr and ends the logging, never the run."""

    def __init__(self, folder: Path, history: list[dict]):
        self.folder = folder
        self.live = None
        self.failed = False
        self._guarded(self._start, history)

    def _start(self, history: list[dict]) -> None:
        self.live = _folder_only_live(self.folder)  # empties the folder's curves of an earlier run
        for row in history:  # a resumed run: the epochs before its resume point, as they were logged
            self._write(row)

    def epoch(self, row: dict) -> None:
        self._guarded(self._write, row)

    def close(self) -> None:
        if self.live is not None:
            self._guarded(self.live.end)

    def _write(self, row: dict) -> None:
        self.live.step = int(row["epoch"])
        for key, value in row.items():
            if key not in NOT_LOGGED:
                self.live.log_metric(key, float(value))
        self.live.next_step()  # writes SUMMARY: a reader that sees its step sees every curve up to it

    def _guarded(self, write: Callable, *args) -> None:
        if self.failed:
            return
        try:
            write(*args)
        except Exception as exc:  # any failure of the logger (a full disk, a folder that is a file, dvclive missing)
            self.failed = True
            print(f"warning: {self.folder}: live training curves stopped ({type(exc).__name__}: {exc}); "
                  "training goes on and history.csv gets every epoch", file=sys.stderr, flush=True)


@contextlib.contextmanager
def live_log(folder: Path | None, history: list[dict]) -> Iterator[Callable[[dict], None]]:
    """A call that logs one epoch's history row into `folder` (None: a call that does nothing, for
    the processes that do not write the run's files), closed however the block ends."""
    if folder is None:
        yield lambda row: None
        return
    log = LiveLog(folder, history)
    try:
        yield log.epoch
    finally:
        log.close()
