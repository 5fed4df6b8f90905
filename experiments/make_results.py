"""Rebuild every table, figure and result number of docs/results.md from the committed files alone.

    python experiments/make_results.py            # rewrite the generated blocks and docs/figures/<section>.png
    python experiments/make_results.py --check    # exit 1 when the page differs from what the files give

The inputs are experiments/results/<experiment>.csv (one row per run), curves/<experiment>.csv,
predictions/<experiment>.csv and epochs/<experiment>.csv (per-epoch evaluations of ``--epoch-eval`` runs:
a section with ``epochs`` gets one table per setting, epoch × method), written from `balora compare`
folders by experiments/export_results.py, and tsne/<experiment>.csv (2-D t-SNE coordinates of saved
representations, by experiments/export_tsne.py; experiments/results_tsne.py draws and scores them).
docs/results.md holds hand-written prose and generated blocks ``<!-- BEGIN name -->`` ...
``<!-- END name -->``; only the blocks are rewritten, and the prose may hold no result number: ``--check``
also fails on a standalone number in the prose outside code (numbers inside names such as SmolLM2 are fine).

Statistics: mean ± sample std over seeds per method; for each comparison the paired difference a − b
(same seed = same data split and order) with a 95 % percentile interval from a bootstrap over seeds and
test examples (:mod:`balora.experiment.stats`); a difference is "supported" only when the interval
excludes 0. An experiment without a committed table is reported as not re-derivable.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_data import Experiment, at_best, best_settings, gather, groups, load_experiment, missing, paired, sort_key  # noqa: E402
from results_sections import BY_NAME, CLAIMS, LOST, RUN_ALL, SECTIONS, SETUP, Section  # noqa: E402
from results_sweep import sweep_block  # noqa: E402
from results_tsne import TSNE_EXPERIMENT, tsne_block, tsne_figure  # noqa: E402

from balora.experiment.stats import describe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
DOC = ROOT / "docs" / "results.md"
BLOCK = re.compile(r"(<!-- BEGIN ([\w-]+) -->\n)(.*?)(<!-- END \2 -->)", re.S)


def absent(section: Section, names: list[str]) -> str:
    """Why the rows of experiments ``names`` are not on the page: lost raw data, or never run."""
    how = f"re-run with `experiments/run_all.sh {_run_all(section, names)}`"
    if any(name in LOST for name in names):
        return f"not re-derivable from the repository (raw data lost; {how})"
    return f"not run yet ({how.replace('re-run', 'run')})"


# ---------------------------------------------------------------- numbers and tables
def _key_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _run_all(section: Section, names: list[str]) -> str:
    return " ".join(dict.fromkeys(RUN_ALL.get(n, section.name) for n in names)) or section.name


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    s = describe(values)
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}" if s.n > 1 else f"{s.mean:.{digits}f}"


def _numbers(rows: list[dict], column: str) -> list[float]:
    return [float(r[column]) for r in rows if isinstance(r.get(column), (int, float))]


def section_rows(section: Section, experiments: dict[str, Experiment | None]) -> list[dict]:
    """The section's rows (:func:`results_data.gather`); with ``section.tuned``, each method's at its chosen value."""
    if section.tuned is None:
        return gather(section.sources, experiments, section.keys)
    rows = gather(section.sources, experiments, [*section.keys, section.tuned])
    return at_best(rows, section.tuned, section.tuned_on)


def method_table(rows: list[dict], section: Section) -> str:
    chosen = [f"{section.tuned} (best seed-0 {section.tuned_on})"] if section.tuned else []
    header = ["method", *section.keys, *chosen, "seeds", *(label for _, label in section.metrics),
              "wall time (s/run)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, members in groups(rows, section.keys).items():
        seeds = ",".join(str(r["seed"]) for r in members)
        cells = [fmt(_numbers(members, m)) for m, _ in section.metrics]
        runtime = _numbers(members, "runtime_s")
        wall = f"{sum(runtime) / len(runtime):.0f}" if runtime else "–"
        value = [_key_text(members[0].get(section.tuned)) if members[0].get(section.tuned) is not None else "–"
                 for _ in chosen]
        lines.append("| " + " | ".join([key[0], *map(_key_text, key[1:]), *value, seeds, *cells, wall]) + " |")
    return "\n".join(lines)


def epoch_tables(rows: list[dict], section: Section, experiments: dict) -> str:
    """Per setting of ``section.keys``: one row per epoch end, per method the mean ± std over seeds of each
    ``section.epochs`` column (from the committed epochs/ tables)."""
    logged: dict[tuple, list[dict]] = {}
    for name in dict.fromkeys(r["experiment"] for r in rows):
        for entry in experiments[name].epochs if experiments.get(name) else []:
            logged.setdefault((name, entry["cell"]), []).append(entry)
    settings = sorted({tuple(r.get(k) for k in section.keys) for r in rows}, key=lambda t: tuple(map(sort_key, t)))
    out = []
    for setting in settings:
        members = groups([r for r in rows if tuple(r.get(k) for k in section.keys) == setting], [])
        entries = {label: [e for r in group for e in logged.get((r["experiment"], r["cell"]), [])]
                   for (label,), group in members.items()}
        epochs = sorted({e["epoch"] for found in entries.values() for e in found if e.get("epoch") is not None})
        if not epochs:
            continue
        where = ", ".join(f"{k}={_key_text(v)}" for k, v in zip(section.keys, setting, strict=True))
        header = ["epoch", *(f"{label} {name}" for label in entries for _, name in section.epochs)]
        lines = [f"Per epoch{', ' + where if where else ''} (mean ± std over seeds):", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for epoch in epochs:
            cells = [fmt(_numbers([e for e in found if e.get("epoch") == epoch], column))
                     for found in entries.values() for column, _ in section.epochs]
            lines.append("| " + " | ".join([_key_text(epoch), *cells]) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) or "_no per-epoch evaluations committed (epochs/ tables)_"


def difference(rows: list[dict], section: Section, a: str, b: str, where: dict, experiments: dict):
    """The paired difference of labels ``a`` and ``b`` within the group ``where`` (None: not both present)."""
    subset = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    ra, rb = [r for r in subset if r["label"] == a], [r for r in subset if r["label"] == b]
    if not ra or not rb:
        return None
    return paired(ra, rb, section.metric, experiments, section.higher_is_better)


def _reading(d, a: str, b: str) -> str:
    if d.low > 0:
        return f"**{a} ahead** (the interval excludes 0)"
    if d.high < 0:
        return f"**{b} ahead** (the interval excludes 0)"
    return "cannot tell (the interval includes 0)"


def _scope(d) -> str:
    seeds = f"{d.seeds} seed{'s' * (d.seeds != 1)}"
    return f"{seeds} × {d.examples} examples" if d.examples > 1 else f"{seeds}, per-seed values"


def comparisons(rows: list[dict], section: Section, experiments: dict) -> str:
    settings = sorted({tuple(r.get(k) for k in section.keys) for r in rows}, key=lambda t: tuple(map(sort_key, t)))
    out = []
    for setting in settings:
        where = dict(zip(section.keys, setting, strict=True))
        prefix = "".join(f"{k}={_key_text(v)}: " for k, v in where.items())
        for a, b in section.pairs:
            d = difference(rows, section, a, b, where, experiments)
            if d is not None:
                out.append(f"- {prefix}{a} − {b}: {d.interval()} ({_scope(d)}) → {_reading(d, a, b)}")
    return "\n".join(out) or "_no pair of methods shares a seed_"


def setup_line(rows: list[dict]) -> str:
    shared = []
    for key in SETUP:
        values = {repr(r.get(key)) for r in rows}
        if len(values) == 1 and rows[0].get(key) not in (None, ""):
            shared.append(f"{key} {_key_text(rows[0][key])}")
    seeds = sorted({r["seed"] for r in rows})
    return f"Settings shared by every run: {', '.join(shared)}; seeds {', '.join(map(str, seeds))}."


def section_block(section: Section, experiments: dict[str, Experiment | None], figures: Path | None) -> str:
    rows = section_rows(section, experiments)
    if not rows:
        return f"_Results {absent(section, missing(section.sources, experiments))}._"
    higher = "" if section.higher_is_better else ", sign flipped: > 0 means a is better"
    runtime = _numbers(rows, "runtime_s")
    used = list(dict.fromkeys(r["experiment"] for r in rows))
    parts = [setup_line(rows), method_table(rows, section),
             *([epoch_tables(rows, section, experiments)] if section.epochs else []),
             f"Paired differences of {section.metric} (a − b{higher}; 95 % interval from a bootstrap over seeds "
             f"and test examples where per-example predictions are committed, else over seeds):",
             comparisons(rows, section, experiments),
             f"Wall time: {len(rows)} run{'s' * (len(rows) != 1)}, {sum(runtime) / 60:.1f} min in all. Data: "
             + ", ".join(f"`experiments/results/{name}.csv`" for name in used) + "."]
    gone = [name for name in missing(section.sources, experiments) if name not in used]
    for lost_data in (True, False):
        names = [g for g in gone if (g in LOST) == lost_data]
        if names:
            parts.append("Rows of " + ", ".join(f"`{g}`" for g in names) + f": {absent(section, names)}.")
    if section.figure and figures is not None:
        what = "per epoch, mean over seeds" if section.epochs else "test metric per seed, training loss"
        parts.append(f"![{section.name}: {what}](figures/{section.name}.png)")
    return "\n\n".join(parts)


def summary_block(experiments: dict[str, Experiment | None]) -> str:
    lines = ["| claim | the paper | at this scale | a − b [95 % interval] | where |", "|---|---|---|---|---|"]
    for claim in CLAIMS:
        section = BY_NAME[claim.section]
        rows = section_rows(section, experiments)
        d = difference(rows, section, claim.a, claim.b, claim.where, experiments) if rows else None
        if not rows:
            verdict, interval = absent(section, missing(section.sources, experiments)), "–"
        elif d is None:
            how = _run_all(section, [source.experiment for source in section.sources])
            verdict, interval = f"not in the committed runs (`experiments/run_all.sh {how}`)", "–"
        else:
            verdict, interval = f"**{d.verdict(claim.claimed)}**", f"{d.interval()} ({_scope(d)})"
        lines.append(f"| {claim.text} | {claim.paper} | {verdict} | {interval} | ({section.name}) |")
    return "\n".join(lines)


def machine_block(experiments: dict[str, Experiment | None]) -> str:
    seen: dict[str, list[str]] = {}
    for name, experiment in experiments.items():
        for row in experiment.rows if experiment else []:
            env = ", ".join(f"{k.removeprefix('env_')} {_key_text(row[k])}" for k in sorted(row)
                            if k.startswith("env_") and row[k] not in (None, ""))
            seen.setdefault(env or "not recorded", [])
            if name not in seen[env or "not recorded"]:
                seen[env or "not recorded"].append(name)
    if not seen:
        return "_no committed runs_"
    return "\n".join(f"- {env} ({', '.join(names)})" for env, names in seen.items())


# ---------------------------------------------------------------- the page
def load_all(results: Path) -> dict[str, Experiment | None]:
    names = dict.fromkeys(s.experiment for section in SECTIONS for s in section.sources)
    return {name: load_experiment(results, name) for name in names}


def render(text: str, results: Path, figures: Path | None) -> str:
    experiments = load_all(results)
    sweep = BY_NAME["weight-sweep"]
    makers = {"summary": lambda: summary_block(experiments), "machine": lambda: machine_block(experiments),
              "weight-sweep-terms": lambda: sweep_block(gather(sweep.sources, experiments, sweep.keys), experiments),
              "imbalance-tsne": lambda: tsne_block(results, experiments, figures is not None,
                                                   absent(BY_NAME["imbalance"], [TSNE_EXPERIMENT])),
              **{s.name: (lambda s=s: section_block(s, experiments, figures)) for s in SECTIONS}}
    unknown = sorted({m.group(2) for m in BLOCK.finditer(text)} - set(makers))
    if unknown:
        raise SystemExit(f"make_results: the page has blocks no generator knows: {', '.join(unknown)}")
    return BLOCK.sub(lambda m: m.group(1) + makers[m.group(2)]() + "\n" + m.group(4), text)


TYPED_NUMBER = re.compile(r"(?<![\w.\-/#])[+\-−]?\d[\d,]*(?:\.\d+)?(?![\w/])")
DEFINITIONS = {"0", "1", "-1", "−1", "95"}  # zero, the Sign clip range [-1, 1] and the 95 % interval level


def typed_numbers(text: str) -> list[str]:
    """Standalone numbers in the hand-written prose (outside blocks, code, links, comments and headings)."""
    prose = BLOCK.sub("", text)
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    prose = re.sub(r"<!--.*?-->|`[^`]*`|\]\([^)]*\)", "", prose, flags=re.S)
    found = []
    for line in prose.splitlines():
        if line.lstrip().startswith("#"):
            continue
        found += [f"{line.strip()[:70]!r}: {m.group(0)}" for m in TYPED_NUMBER.finditer(line)
                  if m.group(0).rstrip(",") not in DEFINITIONS]
    return found


def draw_figures(results: Path, figures: Path) -> list[Path]:
    from results_figures import draw, draw_epochs

    experiments = load_all(results)
    drawn = []
    for section in SECTIONS:
        rows = section_rows(section, experiments)
        if section.figure and rows:
            used = [experiments[name] for name in dict.fromkeys(r["experiment"] for r in rows) if experiments[name]]
            if section.epochs:
                entries = [e for experiment in used for e in experiment.epochs]
                drawn.append(draw_epochs(rows, entries, section, figures / f"{section.name}.png"))
            else:
                curves = [c for experiment in used for c in experiment.curves]
                drawn.append(draw(rows, curves, section, figures / f"{section.name}.png"))
    tsne = tsne_figure(results, experiments, figures)
    return drawn + ([tsne] if tsne else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the page is not what "
                        "the committed files give, or if its prose holds a typed number")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the committed result tables")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page")
    parser.add_argument("--no-figures", action="store_true", help="do not redraw docs/figures/<section>.png")
    parser.add_argument("--best-lr", nargs="?", const="lr", metavar="SECTION",
                        help="only print 'METHOD LR' for each method of SECTION (default: lr) whose best seed-0 "
                        "validation learning rate has fewer than --best-lr-seeds seeds (for experiments/run_all.sh)")
    parser.add_argument("--best-lr-seeds", type=int, default=3, metavar="N", help="with --best-lr: the seeds "
                        "each chosen rate should have (default 3)")
    args = parser.parse_args(argv)
    if args.best_lr:
        return print_best_lr(args.results, args.best_lr, args.best_lr_seeds)
    if not args.doc.is_file():
        print(f"{args.doc} not found", file=sys.stderr)
        return 1
    text = args.doc.read_text()
    figures = args.doc.parent / "figures"
    new = render(text, args.results, figures)
    typed = typed_numbers(new)
    if args.check:
        problems = 0
        if new != text:
            diff = difflib.unified_diff(text.splitlines(), new.splitlines(), "page", "from the files", lineterm="")
            print("\n".join(list(diff)[:60]))
            print(f"make_results --check: {args.doc} differs from what {args.results} gives", file=sys.stderr)
            problems += 1
        figures_named = re.findall(r"\]\((figures/[^)]+)\)", new)
        for name in figures_named:
            if not (args.doc.parent / name).is_file():
                print(f"make_results --check: figure {name} is missing; run make_results.py", file=sys.stderr)
                problems += 1
        for item in typed:
            print(f"make_results --check: a typed number in the prose: {item}", file=sys.stderr)
        return 1 if problems or typed else 0
    args.doc.write_text(new)
    print(f"wrote {args.doc}")
    if not args.no_figures:
        for path in draw_figures(args.results, figures):
            print(f"wrote {path}")
    for item in typed:
        print(f"warning: a typed number in the prose: {item}", file=sys.stderr)
    return 0


def print_best_lr(results: Path, name: str, seeds: int = 3) -> int:
    """For experiments/run_all.sh: each method of section ``name`` whose best seed-0 validation learning rate
    has fewer than ``seeds`` runs, with that rate (so that it is run at it with more seeds)."""
    if name not in BY_NAME:
        print(f"make_results --best-lr: no section {name!r} (one of: {', '.join(BY_NAME)})", file=sys.stderr)
        return 2
    section, rate = BY_NAME[name], "learning_rate_used"
    validation = section.tuned_on if section.tuned else "val_accuracy"
    rows = gather(section.sources, load_all(results), [*section.keys, rate])
    for method, best in best_settings(rows, rate, validation).items():
        if len({r["seed"] for r in rows if r["label"] == method and r.get(rate) == best}) < seeds:
            print(method, f"{best:g}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
