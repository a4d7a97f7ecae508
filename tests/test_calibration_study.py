"""`python -m benchmarks.calibration` on a real bundle and dataset layout: file scores as the
device computes them, held-out dev figures, references and groups."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.calibration import main
from convert.score_calibration import expected_calibration_error
from device.runtime import Scorer


def test_calibration_study_tables_what_the_device_scores(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    from tests.convert_fixtures import write_easy_corpus

    corpus = write_easy_corpus(
        tmp_path / "corpus", sizes={"train": (2, 1), "dev": (6, 2), "eval": (6, 2)}
    )
    bundle = shutil.copytree(fixture_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["calibration"] = {"method": "platt", "a": 0.5, "b": -0.25}
    manifest.setdefault("data", {})["trained_on"] = {"format": "asvspoof2019", "root": "/nowhere"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "results"
    assert main(["--bundle", str(bundle), "--data", str(corpus), "--out", str(out)]) == 0
    report = json.loads((out / "calibration-bundle.json").read_text())
    assert (out / "calibration-bundle.md").read_text().startswith("Calibration study: 12 dev")
    assert (out / "calibration-bundle.png").stat().st_size > 0
    assert report["ece_bins"] == 15 and report["files"] == {"dev": 12, "eval": 12}

    rows = {r["rule"]: r for r in report["rows"]}
    assert list(rows)[:2] == ["none", "bundle's own (PyTorch dev files)"]
    bundle_row = rows["bundle's own (PyTorch dev files)"]
    assert (bundle_row["a"], bundle_row["b"]) == (0.5, -0.25)
    assert bundle_row["held_out_dev_file"] is None  # fitted on all of dev: no held-out figure
    # The file quantity is what `clad-agent score` reports: the same ECE from its P(spoof).
    scorer = Scorer(bundle, "int8")
    eval_files = sorted((corpus / "ASVspoof2019_LA_eval" / "flac").glob("*.flac"))
    protocol = corpus / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.eval.trl.txt"
    label = {
        line.split()[1]: line.split()[4] == "spoof"
        for line in protocol.read_text().split("\n")
        if line
    }
    p = [scorer.score_file(f)["score"] for f in eval_files]
    y = [int(label[f.stem]) for f in eval_files]
    assert bundle_row["eval_file"] == pytest.approx(
        expected_calibration_error(np.array(p), np.array(y)), abs=1e-9
    )
    for name, row in rows.items():
        if name != "bundle's own (PyTorch dev files)":
            assert (
                0.0 <= row["held_out_dev_file"] <= 1.0 and 0.0 <= row["held_out_dev_window"] <= 1.0
            )
    assert rows["temperature, dev files"]["b"] == 0.0
    # (a, b) = (1, 0) is on the grid: the best affine map on eval is at most the softmax's ECE.
    best = report["references"]["best_affine_eval_file"]["ece"]
    assert best <= rows["none"]["eval_file"] + 1e-12
    groups = {g["group"]: g for g in report["eval_groups_bundle_map"]}
    assert groups["attack bonafide"]["fraction_spoof"] == 0.0
    assert report["attacks_seen_in_training"] == ["A01", "A02", "A03"]
    assert groups["bona fide + attacks unseen in training"]["files"] == 6  # bona fide only


def test_calibration_study_says_what_is_missing(fixture_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    code = main(
        ["--bundle", str(fixture_bundle), "--data", str(tmp_path / "no"), "--out", str(out)]
    )
    assert code == 2 and not out.exists()
