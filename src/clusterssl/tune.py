"""Equal-budget recipe search: every method gets the same number of proxy runs, on the same
proxy, scored by the same metric, before its default is fixed.

The proxy holds `holdout` images of the train split out (a fixed seeded draw), pretrains on
`pretrain_images` of the others for `epochs` epochs with the preset's backbone, and scores the
frozen encoder by the linear probe's top-1 on the held-out images (the probe is fitted on
`probe_images` of the others). The test split is never read. A search file
(`config/search/round<N>.yaml`, one per round) lists each method's candidates as overrides of
its params, dotted keys under `method_params.<method>` (`temperature`, `augment.crop_scale`,
`pretrain.lr`, ...); every method must list the same number. Results go to
`<results>/tuning/<dataset>/<round>/<method>.{csv,md}` (`<round>`: the search file's name
without `.yaml`), the proxy's data to `<results>/tuning/<dataset>/data`; each row records the fingerprint of what it scored (the resolved recipe, backbone, probe, proxy),
so a search run again skips exactly the candidates whose run is unchanged: after a preset edit
(say, a winner adopted), `{}` means the new preset and is scored again."""
from __future__ import annotations

import copy
import fcntl
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import data, paths
from .config import fingerprint, read_yaml_mapping, validate
from .io import UserError, atomic_dir, read_json, write_text

PROXY_KEYS = {"holdout", "pretrain_images", "epochs", "probe_images", "seed"}


def load_search(path: str | Path) -> dict:
    search = read_yaml_mapping(path, "search")
    if set(search) != {"proxy", "candidates", "methods"}:
        raise UserError(f"{path}: expected exactly the keys proxy, candidates and methods")
    if set(search["proxy"]) != PROXY_KEYS or not all(isinstance(v, int) and v >= 0 for v in search["proxy"].values()):
        raise UserError(f"{path}: 'proxy' needs the integer keys {', '.join(sorted(PROXY_KEYS))}")
    for method, candidates in search["methods"].items():
        if method not in paths.ALL_METHODS:
            raise UserError(f"{path}: 'methods.{method}' is not a method; choose from {', '.join(paths.ALL_METHODS)}")
        if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
            raise UserError(f"{path}: 'methods.{method}' must be a list of overrides ({{dotted key: value}})")
        if len(candidates) != search["candidates"]:
            raise UserError(
                f"{path}: 'methods.{method}' lists {len(candidates)} candidates, not {search['candidates']}: "
                "every method gets the same number of proxy runs"
            )
    return search


def with_overrides(params: dict, method: str, overrides: dict, source: str) -> dict:
    """A copy of `params` with `overrides` ({'augment.crop_scale': [...], 'temperature': 0.1})
    set under method_params.<method>, validated."""
    params = copy.deepcopy(params)
    for key, value in overrides.items():
        *sections, last = key.split(".")
        d = params["method_params"][method]
        for section in sections:
            d = d.setdefault(section, {})
        d[last] = value
    return validate(params, f"{source} (method_params.{method} with {overrides})")


def proxy_data(params: dict, proxy: dict, out: Path) -> Path:
    """The proxy's dataset under `out`: its train split is the train images not held out, its
    test split the held-out ones. Written once; returns its data folder."""
    name = params["dataset"]
    target = out / "data"
    prepared = paths.prepared_dir({"paths": {"data": str(target)}}, name)
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:  # searches of several methods side by side write it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (prepared / "meta.json").exists() or read_json(prepared / "meta.json").get("proxy") != proxy:
            _write_proxy_data(params, proxy, prepared)
    return target


def _write_proxy_data(params: dict, proxy: dict, prepared: Path) -> None:
    name = params["dataset"]
    source = paths.prepared_dir(params, name)
    train = data.load_prepared(source, "train")
    order = np.random.default_rng(proxy["seed"]).permutation(len(train.labels))
    held, rest = np.sort(order[: proxy["holdout"]]), np.sort(order[proxy["holdout"]:])
    with atomic_dir(prepared) as tmp:
        data.write_prepared(tmp, name, data.load_meta(source)["classes"],
                            (train.images[rest], train.labels[rest]), (train.images[held], train.labels[held]), proxy=proxy)


def proxy_params(params: dict, proxy: dict, data_dir: Path, run_dir: Path) -> dict:
    params = copy.deepcopy(params)
    params["paths"] = {"data": str(data_dir), "results": str(run_dir)}
    params["data"]["max_train"] = proxy["pretrain_images"]
    params["pretrain"]["epochs"] = proxy["epochs"]
    params["eval"]["max_train"] = proxy["probe_images"]
    return params


def run_search(params: dict, search: dict, method: str, threads: int | None = None, source: str = "search") -> Path:
    """Score every candidate of `method` on the proxy; write the table; return the CSV's path."""
    from .evaluate.features import embed
    from .evaluate.run import evaluate
    from .train import pretrain, pretrain_config

    if method not in search["methods"]:
        raise UserError(f"{source}: no candidates for '{method}' under 'methods'")
    proxy, seed = search["proxy"], search["proxy"]["seed"]
    tuning = paths.results_dir(params) / "tuning" / params["dataset"]
    out = tuning / Path(source).stem  # one folder per round (search file)
    csv = out / f"{method}.csv"
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["candidate", "overrides", "fingerprint"])
    data_dir = proxy_data(params, proxy, tuning)  # every round scores on the same proxy data
    rows = done.to_dict("records")
    candidates = [with_overrides(params, method, o, source) for o in search["methods"][method]]  # all valid before any training
    for i, overrides in enumerate(search["methods"][method]):
        run_dir = out / method / str(i)
        p = proxy_params(candidates[i], proxy, data_dir, run_dir)
        # what the score depends on; the data folder and run dir are left out (same run wherever it lives)
        run = fingerprint({**pretrain_config(p, method), "eval": p["eval"], "proxy": proxy})
        if any(r["candidate"] == i and r.get("fingerprint") == run for r in rows):
            continue
        t0 = time.time()
        pretrain(p, method, seed, threads=threads, progress=False)
        seconds = time.time() - t0
        embed(p, method, seed, threads=threads)
        metrics = {e: read_json(evaluate(p, e, method, seed, threads=threads)) for e in ("linear", "knn")}
        rows = [r for r in rows if r["candidate"] != i] + [{
            "candidate": i, "overrides": json.dumps(overrides, sort_keys=True), "fingerprint": run,
            "holdout_linear_top1": round(100 * metrics["linear"]["metrics"]["top1"], 2),
            "holdout_knn20_top1": round(100 * metrics["knn"]["metrics"].get("k20_top1", np.nan), 2),
            "pretrain_seconds": round(seconds, 1),
        }]
        write_text(csv, pd.DataFrame(rows).sort_values("candidate").to_csv(index=False))
        shutil.rmtree(run_dir)  # checkpoints and features: tens of MB a candidate; the scores are kept
    table = pd.DataFrame(rows).sort_values("candidate").reset_index(drop=True)
    write_text(out / f"{method}.md", markdown(table, params, method, proxy))
    return csv


def markdown(table: pd.DataFrame, params: dict, method: str, proxy: dict) -> str:
    from .train import pretrain_config

    best = table["holdout_linear_top1"].idxmax()
    cfg = pretrain_config(params, method)
    t = cfg["pretrain"]
    lines = [
        f"### {method}",
        "",
        f"Proxy: {proxy['pretrain_images']} pretraining images, {proxy['epochs']} epochs; score: linear top-1 on "
        f"{proxy['holdout']} held-out train images (probe fitted on {proxy['probe_images']} others); seed {proxy['seed']}. "
        f"The preset's recipe: {t['optimizer']} lr {t['lr']} (per 256), weight decay {t['weight_decay']}, batch {t['batch_size']}, "
        f"crop scale {cfg['augment']['crop_scale']}; method params {cfg['method_params']}.",
        "",
        "| # | overrides of the preset | held-out linear | held-out k-NN20 | pretraining s |",
        "|---|---|---|---|---|",
    ]
    for idx, r in table.iterrows():
        mark = "**" if idx == best else ""
        overrides = ", ".join(f"`{k}: {v}`" for k, v in json.loads(r["overrides"]).items()) or "the preset's recipe"
        lines.append(f"| {r['candidate']} | {overrides} | {mark}{r['holdout_linear_top1']:.2f}{mark} | {r['holdout_knn20_top1']:.2f} | {r['pretrain_seconds']:.0f} |")
    return "\n".join(lines) + "\n"
