"""Stress grids of several seeds per recipe, side by side: is a difference bigger than the
seed-to-seed spread?

    python -m train.robustness_seeds --recipe none=runs/a_s0,runs/a_s1 \\
        --recipe aug=runs/b_s0,runs/b_s1 [--out DIR]

Each folder holds a `robustness.json` of `python -m train.robustness` (same files, same
seed). Per recipe: clean EER, mean EER over the grid and worst condition / clean, per seed,
with their mean and spread (sample standard deviation; min..max); the relative change of
the mean EER of each recipe against the first; and the per-condition EER averaged over the
seeds. Written to DIR as `robustness_seeds.md` and `robustness_seeds.json` when --out is
given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _spread(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(array.mean()), 4),
        "std": round(float(array.std(ddof=1)), 4) if array.size > 1 else 0.0,
        "min": round(float(array.min()), 4),
        "max": round(float(array.max()), 4),
    }


def load_recipe(folders: list[Path]) -> list[dict[str, Any]]:
    reports = []
    for folder in folders:
        path = folder / "robustness.json" if folder.is_dir() else folder
        reports.append(json.loads(path.read_text()))
    first = reports[0]
    for folder, report in zip(folders, reports, strict=True):
        if (report["files"], report["seed"]) != (first["files"], first["seed"]):
            raise ValueError(
                f"{folder}: grid of {report['files']} files, seed {report['seed']}; expected "
                f"{first['files']} files, seed {first['seed']} like {folders[0]}"
            )
    return reports


def summarize(recipes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"recipes": {}}
    for name, reports in recipes.items():
        summaries = [r["summary"] for r in reports]
        out["recipes"][name] = {
            "runs": [r["evaluated"] for r in reports],
            "per_seed": summaries,
            "clean_eer": _spread([s["clean_eer"] for s in summaries]),
            "mean_eer": _spread([s["mean_eer"] for s in summaries]),
            "worst_over_clean": _spread([s["worst_over_clean"] for s in summaries]),
        }
    base_name = next(iter(recipes))
    base_mean = out["recipes"][base_name]["mean_eer"]["mean"]
    for data in out["recipes"].values():
        data["mean_eer_change_vs_" + base_name] = round(
            (data["mean_eer"]["mean"] - base_mean) / base_mean, 4
        )
    conditions = [r["condition"] for r in next(iter(recipes.values()))[0]["conditions"]]
    per_condition = []
    for condition in conditions:
        row: dict[str, Any] = {"condition": condition}
        for name, reports in recipes.items():
            values = [
                c["eer"] for r in reports for c in r["conditions"] if c["condition"] == condition
            ]
            row[name] = _spread(values) if values else None
        per_condition.append(row)
    out["per_condition"] = per_condition
    return out


def _short(evaluated: str) -> str:
    """'PyTorch checkpoint runs/x/best.pt' -> 'x'; other descriptions as they are."""
    path = Path(evaluated.split()[-1]) if evaluated else Path()
    return path.parent.name if path.name == "best.pt" else evaluated


def format_report(summary: dict[str, Any]) -> str:
    names = list(summary["recipes"])
    base = names[0]
    lines = [
        "| recipe | seeds | clean EER | mean EER over the grid | worst / clean | mean EER vs "
        + base
        + " |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def cell(s: dict[str, float], percent: bool = True) -> str:
        if percent:
            return (
                f"{100 * s['mean']:.1f}% ± {100 * s['std']:.1f} "
                f"({100 * s['min']:.1f}..{100 * s['max']:.1f})"
            )
        return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['min']:.2f}..{s['max']:.2f})"

    for name in names:
        data = summary["recipes"][name]
        change = data["mean_eer_change_vs_" + base]
        lines.append(
            f"| {name} | {len(data['per_seed'])} | {cell(data['clean_eer'])} | "
            f"{cell(data['mean_eer'])} | {cell(data['worst_over_clean'], False)} | "
            f"{100 * change:+.1f}% |"
        )
    lines += ["", "Per seed:", "", "| recipe | run | clean | mean | worst | worst / clean |"]
    lines.append("|---|---|---:|---:|---|---:|")
    for name in names:
        data = summary["recipes"][name]
        for run, s in zip(data["runs"], data["per_seed"], strict=True):
            lines.append(
                f"| {name} | {_short(run)} | {100 * s['clean_eer']:.1f}% | {100 * s['mean_eer']:.1f}% "
                f"| {s['worst_condition']} {100 * s['worst_eer']:.1f}% | {s['worst_over_clean']} |"
            )
    lines += ["", "EER per condition, mean over the seeds (± sample std):", ""]
    lines.append("| condition | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for row in summary["per_condition"]:
        cells = [
            f"{100 * row[n]['mean']:.1f}% ± {100 * row[n]['std']:.1f}" if row[n] else "-"
            for n in names
        ]
        lines.append(f"| {row['condition']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.robustness_seeds",
        description="Stress grids of several seeds per recipe: means, spreads, differences.",
    )
    parser.add_argument(
        "--recipe",
        action="append",
        required=True,
        help="NAME=FOLDER[,FOLDER...]: the grid folders (robustness.json) of one recipe's "
        "seeds; repeat per recipe, the first is the baseline (no default)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the reports (default: print only)"
    )
    args = parser.parse_args(argv)
    recipes = {}
    try:
        for text in args.recipe:
            name, sep, folders = text.partition("=")
            if not sep or not folders:
                raise ValueError(f"--recipe expects NAME=FOLDER[,FOLDER...], got {text!r}")
            recipes[name] = load_recipe([Path(f) for f in folders.split(",")])
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = summarize(recipes)
    text = format_report(summary)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "robustness_seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
        (args.out / "robustness_seeds.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
