"""Which distillation recipe holds across data sets: a small T x alpha grid and a feature term, per project.

For each project (a folder where ``distill run`` has run: prepared data, teacher, teacher outputs,
the chosen student shape) this trains, with ``benchmarks/methods.py`` and one seed each:

- the ``kl`` student at every (T, alpha) of the grid (``--temperatures`` x ``--alphas``);
- ``kl+hidden_cosine`` at the configured T and alpha (the feature term for a large capacity gap);
- the undistilled baseline.

It prints, per recipe, the test accuracy on every data set and its lift over that set's baseline,
with the mean lift across sets, and which grid point each set's validation accuracy would choose.
A default earns its place by the mean lift across sets, never by one set. Figures go to ``--out``.

    python benchmarks/recipe.py --project sentiment=/tmp/distill-byod/sentiment \
        --project news=/tmp/distill-byod/news --project intents=/tmp/default-run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OTHERS = ("baseline", "kl+hidden_cosine")


def methods(project: Path, out: Path, *args: str, done) -> dict:
    """One benchmarks/methods.py call on ``project``; its JSON. A finished call (``done(json)`` holds) is
    reused; an interrupted one resumes, keeping the runs it finished."""
    if not (out.is_file() and done(json.loads(out.read_text()))):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run([sys.executable, str(ROOT / "benchmarks/methods.py"), "--project", str(project), "--seeds", "1",
                        "--out", str(out), "--resume", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def study(name: str, project: Path, work: Path, temperatures: list[float], alphas: list[float]) -> dict:
    """Every recipe's test (and validation) accuracy on one project, and the baseline's."""
    grid = methods(project, work / f"{name}-grid.json", "--sweep",
                   "--set", f"sweep.temperatures={temperatures}", "--set", f"sweep.alphas={alphas}",
                   done=lambda result: "chosen" in result)
    others = methods(project, work / f"{name}-others.json", "--methods", *OTHERS,
                     done=lambda result: set(OTHERS) <= {run["method"] for run in result.get("runs", [])})
    runs = {f"kl T={p['kd_temperature']:g} a={p['alpha']:g}": p for p in grid["sweep"]}
    runs |= {row["method"]: row for row in others["runs"]}
    return {"baseline": runs.pop("baseline")["accuracy"], "chosen_on_val": grid["chosen"],
            "recipes": {recipe: {"accuracy": r["accuracy"], "val_accuracy": r["val_accuracy"]}
                        for recipe, r in runs.items()}}


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    sets = list(results)
    table = Table(title="test accuracy (lift over the baseline, points), one seed")
    table.add_column("recipe")
    for name in sets:
        table.add_column(name, justify="right")
    table.add_column("mean lift", justify="right")
    table.add_row("baseline", *[f"{results[s]['baseline']:.3f}" for s in sets], "")
    for recipe in results[sets[0]]["recipes"]:
        lifts = [100 * (results[s]["recipes"][recipe]["accuracy"] - results[s]["baseline"]) for s in sets]
        table.add_row(recipe, *[f"{results[s]['recipes'][recipe]['accuracy']:.3f} ({lift:+.1f})"
                                for s, lift in zip(sets, lifts)], f"{sum(lifts) / len(lifts):+.1f}")
    Console().print(table)
    for name in sets:
        chosen = results[name]["chosen_on_val"]
        Console().print(f"{name}: validation chooses T={chosen['kd_temperature']:g}, alpha={chosen['alpha']:g}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", action="append", required=True, help="name=folder, once per data set")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.7])
    parser.add_argument("--work", type=Path, default=Path("/tmp/distill-recipe"), help="per-call JSON (reused)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/recipe.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for item in args.project:
        name, _, folder = item.partition("=")
        if not Path(folder, "data/teacher_outputs/logits.parquet").is_file():
            print(f"{folder}: no teacher outputs; run `distill run` there first", file=sys.stderr)
            return 2
        results[name] = study(name, Path(folder), args.work, args.temperatures, args.alphas)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
