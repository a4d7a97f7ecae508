"""Seed spread of stress grids: means, sample spreads and the change against the baseline
come out of real robustness.json files as computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import robustness_seeds


def write_grid(folder: Path, clean: float, noisy: float, files: int = 240) -> Path:
    folder.mkdir(parents=True)
    rows = [{"condition": "clean", "eer": clean}, {"condition": "white 0 dB", "eer": noisy}]
    report = {
        "evaluated": f"PyTorch checkpoint {folder}/best.pt",
        "files": files,
        "seed": 0,
        "summary": {
            "clean_eer": clean,
            "mean_eer": round((clean + noisy) / 2, 4),
            "worst_condition": "white 0 dB",
            "worst_eer": noisy,
            "worst_over_clean": round(noisy / clean, 2),
        },
        "conditions": rows,
    }
    (folder / "robustness.json").write_text(json.dumps(report))
    return folder


def test_spread_and_change_against_the_baseline(tmp_path: Path, capsys) -> None:
    none = [write_grid(tmp_path / f"n{s}", 0.10, e) for s, e in enumerate((0.30, 0.34))]
    aug = [write_grid(tmp_path / f"a{s}", 0.10, e) for s, e in enumerate((0.20, 0.22))]
    out = tmp_path / "report"
    code = robustness_seeds.main(
        [
            "--recipe",
            "none=" + ",".join(map(str, none)),
            "--recipe",
            "aug=" + ",".join(map(str, aug)),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "robustness_seeds.json").read_text())
    assert summary["recipes"]["none"]["mean_eer"]["mean"] == pytest.approx(0.21)
    assert summary["recipes"]["none"]["mean_eer"]["std"] == pytest.approx(0.0141, abs=1e-4)
    assert summary["recipes"]["aug"]["mean_eer_change_vs_none"] == pytest.approx(-0.2619, abs=1e-4)
    noisy = summary["per_condition"][1]
    assert noisy["condition"] == "white 0 dB" and noisy["aug"]["max"] == pytest.approx(0.22)
    assert "| aug | 2 |" in (out / "robustness_seeds.md").read_text()
    assert "-26.2%" in capsys.readouterr().out


def test_grids_of_different_samples_are_refused(tmp_path: Path, capsys) -> None:
    a = write_grid(tmp_path / "a", 0.1, 0.2)
    b = write_grid(tmp_path / "b", 0.1, 0.2, files=120)
    assert robustness_seeds.main(["--recipe", f"x={a},{b}"]) == 2
    assert "expected 240 files, seed 0" in capsys.readouterr().err
    assert robustness_seeds.main(["--recipe", "x"]) == 2
