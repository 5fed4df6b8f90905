"""Regenerate the tables of docs/results.md from the runs' results.csv files (numbers are never typed in).

    python experiments/make_results.py            # rewrite the generated blocks of docs/results.md
    python experiments/make_results.py --plots    # also draw the merged noise figure and copy figures

docs/results.md holds hand-written prose and generated blocks between
``<!-- BEGIN name -->`` and ``<!-- END name -->``; only the blocks are rewritten. An experiment whose runs
do not exist (yet) gets "not run" in its block.

Rule for "larger than the seed-to-seed spread": with n >= 2 seeds for both methods, a difference of means
counts as clear when |mean_a - mean_b| > std_a + std_b (sample stds over seeds); the Welch t-test p-value
is printed beside it for reference. With one seed nothing is called clear.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from statistics import mean, stdev

import yaml

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs"
DOC = ROOT / "docs" / "results.md"
FIGURES = ROOT / "docs" / "figures"
METRICS = [("accuracy", "test acc"), ("f1_macro", "test macro-F1"), ("val_accuracy", "val acc")]
METHOD_ORDER = ["lora", "pissa", "ba-lora", "ba-lora (paper λ)", "dora", "dual-lora", "full"]


# ---------------------------------------------------------------- reading
def read_rows(experiment: str) -> list[dict]:
    """The rows of runs/<experiment>/results.csv, plus finished cells it does not list yet.

    ``balora compare`` writes results.csv when the whole grid is done; a grid stopped part-way still has
    each finished cell's metrics.json and config.yaml, read here the same way compare reads them.
    """
    rows = []
    file = RUNS / experiment / "results.csv"
    if file.is_file():
        with file.open() as handle:
            for row in csv.DictReader(handle):
                rows.append({k: _num(v) for k, v in row.items()})
    listed = {r["cell"] for r in rows}
    for cell in sorted((RUNS / experiment / "cells").glob("*/metrics.json")):
        if cell.parent.name in listed:
            continue
        config = yaml.safe_load((cell.parent / "config.yaml").read_text())
        metrics = json.loads(cell.read_text())
        runtime = metrics.pop("train_runtime_s", None)
        rows.append({"cell": cell.parent.name, "method": config["method"], "seed": config["seed"],
                     "label_noise": config.get("label_noise"), "rank": config.get("rank"), **metrics,
                     "runtime_s": runtime})
    return rows


def _num(value: str):
    if value in ("", None):
        return None
    try:
        return float(value) if re.search(r"[.eE]", value) or not value.lstrip("-").isdigit() else int(value)
    except ValueError:
        return value


def _order(method: str) -> float:
    """Known methods in their usual order; 'ba-lora (lr 0.002)' and the like right after their method."""
    if method in METHOD_ORDER:
        return METHOD_ORDER.index(method)
    base = method.split(" (")[0]
    return METHOD_ORDER.index(base) + 0.5 if base in METHOD_ORDER else len(METHOD_ORDER)


def group(rows: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for row in rows:
        out.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return out


def stats(rows: list[dict], metric: str) -> tuple[float, float, int] | None:
    values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float))]
    if not values:
        return None
    return mean(values), (stdev(values) if len(values) > 1 else 0.0), len(values)


def fmt(s: tuple[float, float, int] | None, digits: int = 3) -> str:
    if s is None:
        return "–"
    m, sd, n = s
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def welch_p(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    try:
        from scipy.stats import ttest_ind

        with warnings.catch_warnings():  # near-identical seeds: scipy warns of precision loss, p is still fine
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(ttest_ind(a, b, equal_var=False).pvalue)
        return None if math.isnan(p) else p
    except ImportError:  # scipy is optional
        return None


def wall(rows: list[dict]) -> str:
    total = sum(r["runtime_s"] for r in rows if isinstance(r.get("runtime_s"), (int, float)))
    return f"{len(rows)} runs, {total / 60:.1f} min in all ({total / max(len(rows), 1):.0f} s per run)"


# ---------------------------------------------------------------- tables
def method_table(rows: list[dict], metrics=METRICS, extra_keys: list[str] | None = None) -> str:
    keys = ["method", *(extra_keys or [])]
    groups = sorted(group(rows, keys).items(), key=lambda kv: (_order(kv[0][0]), kv[0][1:]))
    header = [*keys, "seeds", *(label for _, label in metrics), "wall time (s/run)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, members in groups:
        seeds = ",".join(str(r["seed"]) for r in members)
        cells = [fmt(stats(members, m)) for m, _ in metrics]
        rt = stats(members, "runtime_s")
        lines.append("| " + " | ".join([*(str(k) for k in key), seeds, *cells, f"{rt[0]:.0f}" if rt else "–"]) + " |")
    return "\n".join(lines)


def comparisons(rows: list[dict], pairs: list[tuple[str, str]], metric: str = "accuracy",
                within: str | None = None) -> str:
    out = []
    settings = sorted({r.get(within) for r in rows}) if within else [None]
    for setting in settings:
        subset = [r for r in rows if within is None or r.get(within) == setting]
        by = group(subset, ["method"])
        for a, b in pairs:
            ra, rb = by.get((a,)), by.get((b,))
            if not ra or not rb:
                continue
            va, vb = [r[metric] for r in ra], [r[metric] for r in rb]
            sa, sb = stats(ra, metric), stats(rb, metric)
            diff = sa[0] - sb[0]
            prefix = f"{within}={setting}: " if within else ""
            if sa[2] < 2 or sb[2] < 2:
                verdict = "one seed: not testable"
            else:
                clear = abs(diff) > sa[1] + sb[1]
                p = welch_p(va, vb)
                verdict = ("**larger than the spread**" if clear else "within the spread") + (
                    f" (sum of stds {sa[1] + sb[1]:.3f}; Welch p = {p:.2f})" if p is not None else
                    f" (sum of stds {sa[1] + sb[1]:.3f})")
            out.append(f"- {prefix}{a} − {b}: {diff:+.3f} {metric} → {verdict}")
    return "\n".join(out) if out else "_not enough runs for comparisons_"


# ---------------------------------------------------------------- experiments
def block_machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = "?"
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or "?"
    return (f"- machine: `nproc` = {nproc}, CPU model \"{cpu}\", no GPU, shared with other jobs "
            f"(runs at low priority with `nice`, `OMP_NUM_THREADS=1`, two experiments at a time)\n"
            f"- software: Python {platform.python_version()}, torch {torch_v}")


def block_main() -> str:
    rows = read_rows("main-tweets")
    if not rows:
        return "_not run_"
    paper = [{**r, "method": "ba-lora (paper λ)"} for r in read_rows("main-tweets-paper")]
    table = method_table(rows + paper)
    comp = comparisons(rows + paper, [("ba-lora", "pissa"), ("ba-lora", "lora"), ("pissa", "lora"),
                                      ("dora", "lora"), ("dual-lora", "lora"), ("ba-lora", "dora"),
                                      ("ba-lora", "dual-lora"), ("ba-lora (paper λ)", "pissa"),
                                      ("ba-lora", "ba-lora (paper λ)")])
    note = f"Wall time: main {wall(rows)}" + (f"; paper-λ {wall(paper)}" if paper else "; paper-λ config not run")
    return f"{table}\n\nDifferences of test accuracy:\n\n{comp}\n\n{note}."


def noise_rows() -> tuple[list[dict], list[dict]]:
    noisy = read_rows("noise-tweets")
    seeds = sorted({r["seed"] for r in noisy}) or [0, 1]
    clean = [{**r, "label_noise": 0.0} for r in read_rows("main-tweets")
             if r["method"] in ("lora", "pissa", "ba-lora") and r["seed"] in seeds]
    return clean, noisy


def block_noise() -> str:
    clean, noisy = noise_rows()
    if not noisy:
        return "_not run_"
    rows = clean + noisy
    table = method_table(rows, extra_keys=["label_noise"])
    comp = comparisons(rows, [("ba-lora", "pissa"), ("ba-lora", "lora"), ("pissa", "lora")], within="label_noise")
    return (f"{table}\n\nDifferences of test accuracy:\n\n{comp}\n\n"
            f"Wall time: noise 0.2/0.4 {wall(noisy)}; the noise-0 rows are runs/main-tweets cells (seeds "
            f"{sorted({r['seed'] for r in clean})}), not re-run.")


def block_imbalance() -> str:
    rows = read_rows("imbalance-tweets")
    if not rows:
        return "_not run_"
    classes = sorted({int(m.group(1)) for r in rows for k in r if (m := re.match(r"recall_class_(\d+)$", k))})
    metrics = [("accuracy", "test acc"), ("f1_macro", "macro-F1"), ("balanced_accuracy", "balanced acc"),
               *((f"recall_class_{c}", f"recall class {c}") for c in classes)]
    train_info = ""
    cells = RUNS / "imbalance-tweets" / "cells"
    info = cells / "lora-seed0" / "run_info.json"
    if info.is_file():
        data = json.loads(info.read_text())
        train_info = (f"\n\nTraining rows after subsampling: {data.get('train_rows')}; classes "
                      f"{', '.join(f'{i} = {n}' for i, n in enumerate(data.get('label_names', [])))}.")
    comp = comparisons(rows, [("ba-lora", "pissa"), ("ba-lora", "lora"), ("pissa", "lora")],
                       metric="balanced_accuracy")
    return (f"{method_table(rows, metrics)}{train_info}\n\nDifferences of test balanced accuracy (the mean "
            f"of the per-class recalls):\n\n{comp}\n\nWall time: {wall(rows)}.")


def block_ablation() -> str:
    seeds = {r["seed"] for t in ("consistency", "diversity", "svd") for r in read_rows(f"ablation-{t}-only")}
    noisy = [r for r in read_rows("noise-tweets") if r.get("label_noise") == 0.2 and r["seed"] in seeds]
    parts = []
    for name, label in (("none", "none (= pissa)"), ("consistency", "consistency only"),
                        ("diversity", "diversity only"), ("svd", "SVD only"), ("all", "all three (= ba-lora)")):
        if name == "none":
            rows = [r for r in noisy if r["method"] == "pissa"]
        elif name == "all":
            rows = [r for r in noisy if r["method"] == "ba-lora"]
        else:
            rows = read_rows(f"ablation-{name}-only")
        parts += [{**r, "method": label} for r in rows]
    own = [r for r in parts if r["method"].endswith("only")]
    if not own:
        return "_not run_"
    table = method_table(parts)
    comp = comparisons(parts, [(label, "none (= pissa)") for label in
                               ("consistency only", "diversity only", "SVD only", "all three (= ba-lora)")])
    return (f"{table}\n\n'none' and 'all three' are the pissa and ba-lora cells of the noise grid at 20% noise "
            f"(same seeds).\n\nDifferences of test accuracy against PiSSA:\n\n{comp}\n\n"
            f"Wall time (the single-term runs): {wall(own)}.")


def rank_rows() -> list[dict]:
    rows = read_rows("rank-tweets")
    if not rows:
        return []
    seeds = {r["seed"] for r in rows}
    base = [{**r, "rank": 8} for r in read_rows("main-tweets")
            if r["method"] in ("lora", "pissa", "ba-lora") and r["seed"] in seeds]
    return base + rows


def block_rank() -> str:
    rows = rank_rows()
    if not rows:
        return "_not run_"
    ranks = sorted({r["rank"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=_order)
    by = group(rows, ["method", "rank"])
    lines = ["| method | " + " | ".join(f"r={k}" for k in ranks) + " |", "|---|" + "---|" * len(ranks)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(fmt(stats(by.get((m, k), []), "accuracy")) for k in ranks) + " |")
    own = [r for r in rows if r["rank"] != 8]
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in own}))
    complete = [k for k in ranks if all(len(by.get((m, k), [])) > 1 for m in methods)]
    comp = "\n".join(comparisons([r for r in rows if r["rank"] == k], [("ba-lora", "pissa"), ("ba-lora", "lora")],
                                 within="rank") for k in complete)
    diffs = f"\n\nDifferences at ranks with ≥ 2 seeds:\n\n{comp}" if comp else ""
    return "\n".join(lines) + (f"\n\nTest accuracy, mean ± std over the seeds run at each rank (seeds {seeds}; "
                               f"r = 8: the main comparison's cells of the same seeds). Wall time (r != 8): "
                               f"{wall(own)}.{diffs}")


def lr_rows() -> list[dict]:
    """Cells of runs/lr-tweets (any seed) with their learning rate, plus main-tweets as lr = 5e-4."""
    rows = read_rows("lr-tweets")
    for r in rows:
        config = yaml.safe_load((RUNS / "lr-tweets" / "cells" / r["cell"] / "config.yaml").read_text())
        r["learning_rate"] = float(config["learning_rate"])
    return rows + [{**r, "learning_rate": 5e-4} for r in read_rows("main-tweets")] if rows else []


def best_learning_rates() -> dict[str, float]:
    """Each method's learning rate with the highest seed-0 validation accuracy (ties: the first, lowest)."""
    by = group([r for r in lr_rows() if r["seed"] == 0], ["method"])
    return {m: max(sorted(rs, key=lambda r: r["learning_rate"]), key=lambda r: r["val_accuracy"])["learning_rate"]
            for (m,), rs in by.items()}


def block_lr() -> str:
    """Validation accuracy against the learning rate (seed 0), then each method at its best rate, all seeds."""
    rows = lr_rows()
    if not rows:
        return "_not run_"
    rates = sorted({r["learning_rate"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=_order)
    by = group([r for r in rows if r["seed"] == 0], ["method", "learning_rate"])
    lines = ["| method | " + " | ".join(f"lr={k:g}" for k in rates) + " | best on val |",
             "|---|" + "---|" * (len(rates) + 1)]
    best = best_learning_rates()
    for m in methods:
        vals = {k: by[(m, k)][0]["val_accuracy"] for k in rates if (m, k) in by}
        cells = [(f"**{vals[k]:.3f}**" if k == best[m] else f"{vals[k]:.3f}") if k in vals else "–" for k in rates]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {best[m]:g} |")
    own = [r for r in rows if r["learning_rate"] != 5e-4]
    text = "\n".join(lines) + ("\n\nValidation accuracy, seed 0 (lr = 5e-4: the main comparison's seed-0 cells); "
                               "test accuracy was not looked at to make this table.")
    tuned = [{**r, "method": f"{r['method']} (lr {r['learning_rate']:g})"} for r in rows
             if r["learning_rate"] == best[r["method"]]]
    if any(r["seed"] != 0 for r in tuned if not r["method"].endswith("(lr 0.0005)")):
        names = sorted({r["method"] for r in tuned}, key=lambda n: _order(n.split(" (")[0]))
        pairs = [(a, b) for a in names for b in names if a != b and b.startswith("lora ")]
        pairs += [(a, b) for a in names for b in names if a.startswith("ba-lora ") and b.startswith("pissa ")]
        text += (f"\n\nEvery method at its own best validation learning rate (the tuned-on-val rows), test "
                 f"metrics over the seeds run at that rate:\n\n{method_table(tuned)}\n\n"
                 f"Differences of test accuracy:\n\n{comparisons(tuned, pairs)}")
    return text + f"\n\nWall time (lr != 5e-4): {wall(own)}."


def block_ood() -> str:
    rows = read_rows("ood-tweets")
    if not rows:
        return "_not run_"
    for r in rows:
        if isinstance(r.get("ood_accuracy"), (int, float)):
            r["ood_drop"] = r["accuracy"] - r["ood_accuracy"]
    metrics = [("accuracy", "in-domain test acc"), ("ood_accuracy", "out-of-domain acc"),
               ("ood_f1_macro", "out-of-domain macro-F1"), ("ood_drop", "drop (in − out)"),
               ("val_accuracy", "val acc")]
    pairs = [("ba-lora", "pissa"), ("ba-lora", "lora"), ("pissa", "lora")]
    return (f"{method_table(rows, metrics)}\n\nDifferences of out-of-domain accuracy:\n\n"
            f"{comparisons(rows, pairs, metric='ood_accuracy')}\n\nWall time: {wall(rows)}.")


NLG_METRICS = [("eval_loss", "test held-out loss"), ("exact_match", "test exact match"),
               ("val_eval_loss", "val loss"), ("val_exact_match", "val exact match"), ("answered", "answered")]
NLG_PAIRS = [("ba-lora", "pissa"), ("ba-lora", "lora"), ("pissa", "lora"), ("dora", "lora"), ("dual-lora", "lora")]


def block_nlg() -> str:
    rows = read_rows("nlg-gsm")
    if not rows:
        return "_not run_"
    base_file = RUNS / "nlg-gsm" / "base.json"
    base = ""
    if base_file.is_file():
        b = json.loads(base_file.read_text())
        base = (f"\n\nThe base model without any training (`python experiments/nlg_base.py`, same 60 test "
                f"problems): held-out loss {b['eval_loss']:.3f}, exact match {b['exact_match']:.3f} over "
                f"{int(b['generated_n'])}.")
    losses = comparisons(rows, NLG_PAIRS, metric="eval_loss")
    matches = comparisons(rows, NLG_PAIRS, metric="exact_match")
    n = {int(r["generated_n"]) for r in rows if isinstance(r.get("generated_n"), (int, float))}
    return (f"{method_table(rows, NLG_METRICS)}\n\nExact match over {', '.join(map(str, sorted(n)))} test "
            f"problems (greedy, final number); held-out loss = mean cross-entropy on the response tokens.{base}\n\n"
            f"Differences of test held-out loss (lower is better):\n\n{losses}\n\n"
            f"Differences of test exact match:\n\n{matches}\n\nWall time: {wall(rows)}.")


def majority_share(rows: list[dict]) -> str:
    """The test share of the larger class, solved from one cell's accuracy and per-class recalls
    (accuracy = r0·s0 + r1·(1 − s0)), so a reader can tell learning from predicting the prior."""
    for r in rows:
        r0, r1, acc = r.get("recall_class_0"), r.get("recall_class_1"), r.get("accuracy")
        if None not in (r0, r1, acc) and abs(r0 - r1) > 1e-9:
            s0 = (acc - r1) / (r0 - r1)
            return f"Majority-class share of the test split: {max(s0, 1 - s0):.3f} (predicting the prior scores this)."
    return ""


def block_boolq() -> str:
    """Probes on validation (can anything learn BoolQ here?), then the five-method comparison."""
    probes = []
    for metrics_file in sorted((RUNS / "boolq-probe").glob("*/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        config = yaml.safe_load((metrics_file.parent / "config.yaml").read_text())
        probes.append(f"| {config['method']} | {config['learning_rate']:g} | {config['train_size']} | "
                      f"{config['epochs']:g} | {metrics['val_accuracy']:.3f} | {metrics['val_f1_macro']:.3f} | "
                      f"{metrics.get('train_runtime_s', 0):.0f} |")
    probe = ("Probes (seed 0, `max_length 128`, validation split only; commands in experiments/run_all.sh):\n\n"
             "| method | learning rate | train rows | epochs | val acc | val macro-F1 | wall time (s) |\n"
             "|---|---|---|---|---|---|---|\n" + "\n".join(probes) if probes else "_probes not run_")
    rows = read_rows("boolq")
    if not rows:
        return probe + "\n\n_comparison not run_"
    comp = comparisons(rows, [("ba-lora", "pissa"), ("ba-lora", "lora"), ("pissa", "lora"), ("dora", "lora"),
                              ("dual-lora", "lora")])
    return (f"{probe}\n\n{majority_share(rows)}\n\n{method_table(rows)}\n\nDifferences of test accuracy:\n\n"
            f"{comp}\n\nWall time: {wall(rows)}.")


BLOCKS = {
    "machine": block_machine,
    "main": block_main,
    "noise": block_noise,
    "imbalance": block_imbalance,
    "ablation": block_ablation,
    "rank": block_rank,
    "lr": block_lr,
    "ood": block_ood,
    "boolq": block_boolq,
    "nlg": block_nlg,
}


# ---------------------------------------------------------------- figures
def plots() -> None:
    """Draw the merged noise and rank figures (noise 0 / r = 8 from main-tweets); copy figures to docs/figures/."""
    clean, noisy = noise_rows()
    for kind, rows in (("noise", clean + noisy if noisy else []), ("rank", rank_rows())):
        if not rows:
            continue
        merged = RUNS / f"{kind}-merged"
        merged.mkdir(parents=True, exist_ok=True)
        # only the plotted columns: 'balora plot' treats every other column that varies (val_f1, ...) as a
        # setting and draws one line per distinct value
        columns = ["cell", "method", "seed", "label_noise" if kind == "noise" else "rank", "accuracy"]
        with (merged / "results.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        subprocess.run(["balora", "plot", kind, str(merged)], check=False)
    FIGURES.mkdir(parents=True, exist_ok=True)
    for source, target in (("main-tweets/bars.png", "main-tweets-bars.png"),
                           ("noise-merged/noise.png", "noise-tweets.png"),
                           ("imbalance-tweets/tsne.png", "imbalance-tsne.png"),
                           ("rank-merged/rank.png", "rank-tweets.png"),
                           ("boolq/bars.png", "boolq-bars.png"),
                           ("ood-tweets/bars.png", "ood-tweets-bars.png"),
                           ("nlg-gsm/bars.png", "nlg-gsm-loss.png")):
        if (RUNS / source).is_file():
            shutil.copyfile(RUNS / source, FIGURES / target)
            shrink(FIGURES / target)


def shrink(png: Path, max_width: int = 1400, max_bytes: int = 200_000) -> None:
    """Keep committed figures small: scale wide PNGs down and re-encode with a palette when large."""
    try:
        from PIL import Image
    except ImportError:
        return
    image = Image.open(png)
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    if image.width < Image.open(png).width or png.stat().st_size > max_bytes:
        image.convert("RGB").quantize(colors=128).save(png, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plots", action="store_true", help="also draw the merged noise figure, copy figures")
    parser.add_argument("--best-lr", action="store_true",
                        help="only print 'METHOD LR' for each method whose best validation rate (seed 0) is not 5e-4")
    args = parser.parse_args(argv)
    if args.best_lr:
        for method, rate in best_learning_rates().items():
            if rate != 5e-4:
                print(method, f"{rate:g}")
        return 0
    if args.plots:
        plots()
    if not DOC.is_file():
        print(f"{DOC} not found", file=sys.stderr)
        return 1
    text = DOC.read_text()
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if pattern.search(text):
            body = make()
            text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
