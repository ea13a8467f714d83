"""Equal-budget recipe search: every method gets the same number of proxy runs, on the same
proxy, scored by the same metric, before its default is fixed.

The proxy holds `holdout` images of the train split out (a fixed seeded draw), pretrains on
`pretrain_images` of the others for `epochs` epochs with the preset's backbone, and scores the
frozen encoder by the linear probe's top-1 on the held-out images (the probe is fitted on
`probe_images` of the others). The test split is never read. A search file
(e.g. `studies/recipe_search/round<N>.yaml`, one per round) lists each method's candidates as overrides of
its params, dotted keys under `method_params.<method>` (`temperature`, `augment.crop_scale`,
`pretrain.lr`, ...); every method must list the same number. Results go to
`<results>/tuning/<dataset>/<round>/<method>.{csv,md}` (`<round>`: the search file's name
without `.yaml`), the proxy's data to `<results>/tuning/<dataset>/data`; each row records the
fingerprint of what it scored (the resolved recipe, backbone, probe, proxy), so a search run
again skips exactly the candidates whose run is unchanged: after a preset edit (say, a winner
adopted), `{}` means the new preset and is scored again. A run with the same fingerprint scored
by another round is not trained again: its scores are copied.

`proxy.train_seeds` (optional; default `[seed]`) trains every candidate once per seed; the
held-out draw stays that of `seed`. With more than one seed, candidate 0 is the baseline and
another candidate replaces it only when its mean gain over the seeds, paired by seed, exceeds
twice its standard error (`decide`)."""
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
NOISE_SE = 2.0  # a candidate replaces the baseline when its mean paired gain exceeds this many standard errors


def load_search(path: str | Path) -> dict:
    search = read_yaml_mapping(path, "search")
    if set(search) != {"proxy", "candidates", "methods"}:
        raise UserError(f"{path}: expected exactly the keys proxy, candidates and methods")
    proxy = search["proxy"]
    if set(proxy) - {"train_seeds"} != PROXY_KEYS or not all(isinstance(proxy[k], int) and proxy[k] >= 0 for k in PROXY_KEYS):
        raise UserError(f"{path}: 'proxy' needs the integer keys {', '.join(sorted(PROXY_KEYS))} (and optionally train_seeds)")
    seeds = proxy.get("train_seeds", [proxy["seed"]])
    if not (isinstance(seeds, list) and seeds and all(isinstance(v, int) and v >= 0 for v in seeds) and len(set(seeds)) == len(seeds)):
        raise UserError(f"{path}: 'proxy.train_seeds' must be a list of distinct non-negative integers, e.g. [0, 1, 2]")
    proxy["train_seeds"] = seeds
    for method, candidates in search["methods"].items():
        if method not in paths.all_methods():
            raise UserError(f"{path}: 'methods.{method}' is not a method; choose from {', '.join(paths.all_methods())}")
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
    """Score every candidate of `method` on the proxy, once per training seed; write the table;
    return the CSV's path."""
    from .train import pretrain_config

    if method not in search["methods"]:
        raise UserError(f"{source}: no candidates for '{method}' under 'methods'")
    proxy = search["proxy"]
    held_out = {k: proxy[k] for k in PROXY_KEYS}  # what the fingerprint names: the same as before train_seeds existed
    tuning = paths.results_dir(params) / "tuning" / params["dataset"]
    out = tuning / Path(source).stem  # one folder per round (search file)
    csv = out / f"{method}.csv"
    data_dir = proxy_data(params, proxy, tuning)  # every round scores on the same proxy data
    seeds = proxy["train_seeds"]
    rows = [r for r in _read_rows(csv, proxy["seed"]) if r["candidate"] < len(search["methods"][method]) and r["seed"] in seeds]
    scored = {r["fingerprint"]: r for f in sorted(tuning.glob(f"*/{method}.csv")) for r in _read_rows(f, proxy["seed"])}
    candidates = [with_overrides(params, method, o, source) for o in search["methods"][method]]  # all valid before any training
    for seed in seeds:
        for i, overrides in enumerate(search["methods"][method]):
            p = proxy_params(candidates[i], proxy, data_dir, out / method / f"{i}-seed{seed}")
            # what the score depends on; the data folder and run dir are left out (same run wherever it lives)
            run = fingerprint({**pretrain_config(p, method), "eval": p["eval"], "proxy": held_out,
                               **({"train_seed": seed} if seed != proxy["seed"] else {})})
            if any(r["candidate"] == i and r["seed"] == seed and r["fingerprint"] == run for r in rows):
                continue
            scores = _scores(scored[run]) if run in scored else _score(p, method, seed, threads)
            row = {"candidate": i, "seed": seed, "overrides": json.dumps(overrides, sort_keys=True), "fingerprint": run, **scores}
            rows = [r for r in rows if (r["candidate"], r["seed"]) != (i, seed)] + [row]
            write_text(csv, pd.DataFrame(rows).sort_values(["candidate", "seed"]).to_csv(index=False))
    table = pd.DataFrame(rows).sort_values(["candidate", "seed"]).reset_index(drop=True)
    write_text(out / f"{method}.md", markdown(table, params, method, proxy))
    return csv


def _read_rows(csv: Path, default_seed: int) -> list[dict]:
    """A round's rows; tables written before train_seeds existed hold the proxy seed's runs."""
    if not csv.exists():
        return []
    table = pd.read_csv(csv)
    if "seed" not in table:
        table.insert(1, "seed", default_seed)
    if "fingerprint" not in table:
        table["fingerprint"] = ""
    return table.fillna({"fingerprint": ""}).to_dict("records")


def _scores(row: dict) -> dict:
    return {k: row[k] for k in ("holdout_linear_top1", "holdout_knn20_top1", "pretrain_seconds")}


def _score(p: dict, method: str, seed: int, threads: int | None) -> dict:
    """Pretrain one candidate on the proxy and score it on the held-out images."""
    from .evaluate.features import embed
    from .evaluate.run import evaluate
    from .train import pretrain

    t0 = time.time()
    pretrain(p, method, seed, threads=threads, progress=False)
    seconds = time.time() - t0
    embed(p, method, seed, threads=threads)
    metrics = {e: read_json(evaluate(p, e, method, seed, threads=threads)) for e in ("linear", "knn")}
    shutil.rmtree(paths.results_dir(p))  # checkpoints and features: tens of MB a candidate; the scores are kept
    return {
        "holdout_linear_top1": round(100 * metrics["linear"]["metrics"]["top1"], 2),
        "holdout_knn20_top1": round(100 * metrics["knn"]["metrics"].get("k20_top1", np.nan), 2),
        "pretrain_seconds": round(seconds, 1),
    }


def standard_error(gain):
    """The standard error of a mean paired gain (per column of a frame); NaN with one seed."""
    return gain.std(ddof=1) / np.sqrt(gain.count())


def decide(table: pd.DataFrame) -> pd.DataFrame:
    """Per candidate: mean held-out linear and k-NN20 over its seeds and, against candidate 0 on the
    same seeds, the mean gain and its standard error. With one seed the best mean wins; with
    several, the best mean replaces candidate 0 only when its gain exceeds NOISE_SE standard errors."""
    by = table.pivot(index="seed", columns="candidate", values="holdout_linear_top1")
    out = table.groupby("candidate").agg(linear=("holdout_linear_top1", "mean"), knn20=("holdout_knn20_top1", "mean"),
                                         seeds=("seed", "size"), seconds=("pretrain_seconds", "mean"))
    gain = by.sub(by[0], axis=0)
    out["gain"] = gain.mean()
    out["gain_se"] = standard_error(gain)
    best = out["linear"].idxmax()
    if len(by) > 1 and best != 0 and not out.loc[best, "gain"] > NOISE_SE * out.loc[best, "gain_se"]:
        best = 0
    out["chosen"] = out.index == best
    return out


def markdown(table: pd.DataFrame, params: dict, method: str, proxy: dict) -> str:
    from .train import pretrain_config

    cfg = pretrain_config(params, method)
    t = cfg["pretrain"]
    seeds = sorted(table["seed"].unique())
    overrides = table.drop_duplicates("candidate").set_index("candidate")["overrides"]
    decision = decide(table)
    several = len(seeds) > 1
    lines = [
        f"### {method}",
        "",
        f"Proxy: {proxy['pretrain_images']} pretraining images, {proxy['epochs']} epochs; score: linear top-1 on "
        f"{proxy['holdout']} held-out train images (probe fitted on {proxy['probe_images']} others); "
        + (f"training seeds {', '.join(map(str, seeds))}, held-out draw of seed {proxy['seed']}. " if several else f"seed {proxy['seed']}. ")
        + f"The preset's recipe: {t['optimizer']} lr {t['lr']} (per 256), weight decay {t['weight_decay']}, batch {t['batch_size']}, "
        f"crop scale {cfg['augment']['crop_scale']}; method params {cfg['method_params']}.",
        "",
    ]
    if several:
        lines += [
            f"Chosen (bold): candidate 0 unless another's mean gain over it, paired by seed, exceeds {NOISE_SE:g} standard errors.",
            "",
            "| # | overrides of the preset | held-out linear, mean | per seed | gain over #0 ± s.e. | held-out k-NN20, mean | pretraining s, mean |",
            "|---|---|---|---|---|---|---|",
        ]
    else:
        lines += ["| # | overrides of the preset | held-out linear | held-out k-NN20 | pretraining s |", "|---|---|---|---|---|"]
    for i, r in decision.iterrows():
        mark = "**" if r["chosen"] else ""
        names = ", ".join(f"`{k}: {v}`" for k, v in json.loads(overrides[i]).items()) or "the preset's recipe"
        if several:
            per_seed = " / ".join(f"{v:.2f}" for v in table[table["candidate"] == i].sort_values("seed")["holdout_linear_top1"])
            gain = "–" if i == 0 else f"{r['gain']:+.2f} ± {r['gain_se']:.2f}"
            lines.append(f"| {i} | {names} | {mark}{r['linear']:.2f}{mark} | {per_seed} | {gain} | {r['knn20']:.2f} | {r['seconds']:.0f} |")
        else:
            lines.append(f"| {i} | {names} | {mark}{r['linear']:.2f}{mark} | {r['knn20']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"
