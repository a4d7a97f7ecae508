"""Training runs on a tiny ASVspoof 2019 LA tree written by the test: smoke, determinism,
resume, bad input, the CLIs, and (slow) torchrun with two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from train.augment import AUGMENT_KINDS, AugmentConfig
from train.checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint
from train.config import TrainConfig
from train.evaluate import evaluate
from train.model import ModelConfig
from train.train import EpochSampler, RunExistsError, TrainingError, class_weights, train

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
WINDOW_SAMPLES = 4000  # 0.25 s keeps every run to seconds
PROTOCOLS = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}


# --------------------------------------------------------------------------- a tiny corpus


def _utterance(rng: np.random.Generator, spoof: bool, seconds: float) -> np.ndarray:
    """A voiced sound with vibrato; spoofs carry a buzz a model can learn."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = rng.uniform(100, 220) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    if spoof:
        x = x + 0.4 * np.sign(np.sin(2 * np.pi * rng.uniform(3000, 5000) * t))
    x = x + 0.05 * rng.standard_normal(t.size)
    return (rng.uniform(0.1, 0.5) * x / np.max(np.abs(x))).astype(np.float32)


def write_corpus(
    root: Path,
    counts: dict[str, tuple[int, int]] | None = None,
    seconds: tuple[float, float] = (0.6, 1.2),
    seed: int = 0,
) -> Path:
    """ASVspoof 2019 LA layout: counts[split] = (bona fide, spoof). Eval has unseen A07."""
    counts = counts or {"train": (8, 8), "dev": (4, 4), "eval": (4, 4)}
    rng = np.random.default_rng(seed)
    protocols = root / "ASVspoof2019_LA_cm_protocols"
    protocols.mkdir(parents=True, exist_ok=True)
    attacks = {"train": ("A01", "A02"), "dev": ("A01", "A02"), "eval": ("A01", "A07")}
    for split, (n_bonafide, n_spoof) in counts.items():
        audio = root / f"ASVspoof2019_LA_{split}" / "flac"
        audio.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(n_bonafide + n_spoof):
            spoof = i >= n_bonafide
            utt = f"LA_{split[0].upper()}_{1000000 + i}"
            sf.write(audio / f"{utt}.flac", _utterance(rng, spoof, rng.uniform(*seconds)), RATE)
            speaker = f"LA_{i % 3:04d}"
            if spoof:
                lines.append(f"{speaker} {utt} - {attacks[split][i % 2]} spoof")
            else:
                lines.append(f"{speaker} {utt} - - bonafide")
        name = f"ASVspoof2019.LA.cm.{PROTOCOLS[split]}.txt"
        (protocols / name).write_text("\n".join(lines) + ("\n" if lines else ""))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "LA")


def tiny_config(root: Path, runs: Path, name: str = "run", **changes) -> TrainConfig:
    base = TrainConfig(
        format="asvspoof2019",
        root=str(root),
        name=name,
        runs_dir=str(runs),
        model=ModelConfig(window_samples=WINDOW_SAMPLES),
        epochs=1,
        batch_size=8,
        augment=AugmentConfig(kinds=AUGMENT_KINDS, probability=0.5),
        threads=1,
    )
    return base.with_changes(**changes)


def comparable(metrics: dict) -> dict:
    """Metrics without wall-clock times, which no seed fixes."""
    metrics = json.loads(json.dumps(metrics))
    for epoch in metrics["epochs"]:
        epoch.pop("train_s")
        epoch.pop("dev_eval_s")
    if metrics.get("final"):
        metrics["final"].pop("time_s", None)
    return metrics


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).data["state_dict"]


# --------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def smoke_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    runs = tmp_path_factory.mktemp("runs")
    return train(tiny_config(corpus, runs, "smoke"), show_progress=False)


def test_one_epoch_smoke_run_writes_every_artifact(smoke_run, corpus: Path) -> None:
    result = smoke_run
    run = result.run_dir
    for name in ("config.json", "train.log", "best.pt", "last.pt", "metrics.json"):
        assert (run / name).is_file(), name
    for name in ("curves.png", "det.png", "hist_dev.png", "hist_eval.png"):
        assert (run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["epochs_completed"] == 1
    (epoch,) = metrics["epochs"]
    for key in ("train_loss", "dev_loss", "dev_eer", "dev_threshold_p_spoof", "dev_accuracy"):
        assert np.isfinite(epoch[key]), key
    assert set(epoch["dev_per_attack_eer"]) == {"A01", "A02"}
    final = metrics["final"]
    assert final["best_epoch"] == 1
    assert set(final["eval"]["per_attack_eer"]) == {"A01", "A07"}
    assert final["eval"]["unseen_attacks"] == ["A07"]
    assert 0.0 <= final["eval"]["unseen_attacks_eer"] <= 1.0
    assert metrics["model"]["window_samples"] == WINDOW_SAMPLES
    assert metrics["model"]["hop_samples"] == WINDOW_SAMPLES // 2

    # Score files: ASVspoof 2019 CM layout, one line per file, higher = more bona fide.
    lines = (run / "scores_eval.txt").read_text().splitlines()
    assert len(lines) == 8
    rows = [line.split() for line in lines]
    assert Counter(r[2] for r in rows) == {"bonafide": 4, "spoof": 4}
    assert all(r[1] == "-" for r in rows if r[2] == "bonafide")
    assert {r[1] for r in rows if r[2] == "spoof"} == {"A01", "A07"}

    # The run's config is saved resolved and loads back to what ran.
    saved = TrainConfig.load(run / "config.json")
    assert saved.model.window_samples == WINDOW_SAMPLES
    assert json.loads((run / "config.json").read_text())["resolved"]["hop_samples"] == 2000
    assert "epoch 1/1" in (run / "train.log").read_text()


def test_best_checkpoint_rebuilds_the_model_and_evaluate_agrees(smoke_run, corpus: Path) -> None:
    result = smoke_run
    run = result.run_dir
    _, checkpoint = model_from_checkpoint(run / "best.pt")
    assert checkpoint.model_config.window_samples == WINDOW_SAMPLES
    assert checkpoint.scoring["hop_samples"] == WINDOW_SAMPLES // 2
    assert checkpoint.run_config["seed"] == 0
    assert "threshold_p_spoof" in checkpoint.dev

    scores_out = run / "rescored.txt"
    report = evaluate(run / "best.pt", "asvspoof2019", corpus, "eval", scores_out=scores_out)
    final_eval = result.metrics["final"]["eval"]
    for key in ("eer", "accuracy", "per_attack_eer", "unseen_attacks_eer"):
        assert report[key] == pytest.approx(final_eval[key]), key
    assert report["accuracy_at_dev_threshold"] == pytest.approx(
        final_eval["accuracy_at_dev_threshold"]
    )
    assert scores_out.read_text() == (run / "scores_eval.txt").read_text()


def test_same_seed_same_metrics_and_another_seed_differs(
    smoke_run, corpus: Path, tmp_path: Path
) -> None:
    first = smoke_run
    again = train(tiny_config(corpus, tmp_path, "again"), show_progress=False)
    assert comparable(again.metrics) == comparable(first.metrics)
    assert (again.run_dir / "scores_eval.txt").read_bytes() == (
        first.run_dir / "scores_eval.txt"
    ).read_bytes()
    a, b = state_dict(first.run_dir / "best.pt"), state_dict(again.run_dir / "best.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

    other = train(tiny_config(corpus, tmp_path, "other", seed=1), show_progress=False)
    assert comparable(other.metrics)["epochs"] != comparable(first.metrics)["epochs"]


def test_loader_workers_do_not_change_the_numbers(smoke_run, corpus: Path, tmp_path: Path) -> None:
    first = smoke_run
    with_workers = train(tiny_config(corpus, tmp_path, "workers", workers=2), show_progress=False)
    assert comparable(with_workers.metrics) == comparable(first.metrics)


# --------------------------------------------------------------------------- resume


def test_resume_extending_a_finished_run_equals_the_longer_run(
    corpus: Path, tmp_path: Path
) -> None:
    straight = train(tiny_config(corpus, tmp_path, "straight", epochs=2), show_progress=False)
    train(tiny_config(corpus, tmp_path, "stepwise", epochs=1), show_progress=False)
    resumed = train(
        tiny_config(corpus, tmp_path, "stepwise", epochs=2), resume=True, show_progress=False
    )
    assert comparable(resumed.metrics) == comparable(straight.metrics)
    assert (resumed.run_dir / "scores_eval.txt").read_bytes() == (
        straight.run_dir / "scores_eval.txt"
    ).read_bytes()


def _cli(corpus: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "train",
        "--format",
        "asvspoof2019",
        "--root",
        str(corpus),
        "--name",
        name,
        "--runs-dir",
        str(runs),
        "--window-samples",
        str(WINDOW_SAMPLES),
        "--batch-size",
        "8",
        "--augment",
        "all",
        "--augment-probability",
        "0.5",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
def test_resume_after_a_kill_ends_where_the_uninterrupted_run_does(
    corpus: Path, tmp_path: Path
) -> None:
    epochs = 3
    straight = train(tiny_config(corpus, tmp_path, "straight", epochs=epochs), show_progress=False)

    # A real interruption: SIGKILL the training process once epoch 1 is checkpointed.
    last = tmp_path / "killed" / "last.pt"
    process = subprocess.Popen(
        _cli(corpus, tmp_path, "killed", "--epochs", str(epochs)),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists(), process.stderr.read() if process.stderr else ""
    killed_at = int(read_checkpoint(last).data["epoch"])
    assert killed_at < epochs, "the run finished before it could be interrupted"

    done = subprocess.run(
        _cli(corpus, tmp_path, "killed", "--epochs", str(epochs), "--resume", "--json"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert f"resuming after epoch {killed_at} of {epochs}" in done.stderr
    resumed = json.loads(done.stdout)
    assert comparable(resumed) == comparable(straight.metrics)
    assert (tmp_path / "killed" / "scores_eval.txt").read_bytes() == (
        straight.run_dir / "scores_eval.txt"
    ).read_bytes()


# --------------------------------------------------------------------------- bad input


def _assert_refused_before_training(run_dir: Path) -> None:
    assert not (run_dir / "last.pt").exists()
    assert not (run_dir / "best.pt").exists()


def test_one_class_only_is_refused(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "LA", {"train": (6, 0), "dev": (2, 2), "eval": (2, 2)})
    with pytest.raises(
        TrainingError, match=r"train split .* one class only \(6 bona fide, 0 spoof\)"
    ):
        train(tiny_config(root, tmp_path / "runs"), show_progress=False)
    _assert_refused_before_training(tmp_path / "runs" / "run")


def test_empty_split_is_refused(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "LA", {"train": (4, 4), "dev": (0, 0), "eval": (2, 2)})
    with pytest.raises(TrainingError, match=r"dev\.trl\.txt"):
        train(tiny_config(root, tmp_path / "runs"), show_progress=False)
    _assert_refused_before_training(tmp_path / "runs" / "run")


def test_window_longer_than_every_file_is_refused(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "LA", seconds=(0.3, 0.4))
    config = tiny_config(root, tmp_path / "runs", model=ModelConfig(window_samples=16000))
    with pytest.raises(
        TrainingError, match=r"window_samples=16000 \(1000 ms\) is longer than every"
    ):
        train(config, show_progress=False)
    _assert_refused_before_training(tmp_path / "runs" / "run")
    # The refused start leaves no run behind: the corrected command needs no --overwrite.
    fixed = train(tiny_config(root, tmp_path / "runs"), show_progress=False)
    assert (fixed.run_dir / "best.pt").exists()
    assert (fixed.run_dir / "train.log").read_text().count("run run: asvspoof2019") == 1


def test_resume_with_another_model_shape_is_refused(smoke_run, corpus: Path) -> None:
    result = smoke_run
    config = tiny_config(
        corpus, result.run_dir.parent, "smoke", model=ModelConfig(window_samples=8000)
    )
    with pytest.raises(TrainingError, match=r"settings differ .* model"):
        train(config, resume=True, show_progress=False)


def test_checkpoint_from_another_shape_is_refused_on_resume(corpus: Path, tmp_path: Path) -> None:
    train(tiny_config(corpus, tmp_path, "swap"), show_progress=False)
    train(
        tiny_config(corpus, tmp_path, "wide", model=ModelConfig(window_samples=8000)),
        show_progress=False,
    )
    # last.pt of a run whose model was 8000 samples wide, dropped into a 4000-sample run.
    os.replace(tmp_path / "wide" / "last.pt", tmp_path / "swap" / "last.pt")
    with pytest.raises(
        CheckpointError,
        match=r"another model shape: window_samples: checkpoint 8000, expected 4000",
    ):
        train(tiny_config(corpus, tmp_path, "swap", epochs=2), resume=True, show_progress=False)


def test_existing_run_is_never_replaced_silently(smoke_run, corpus: Path) -> None:
    result = smoke_run
    runs = result.run_dir.parent
    before = (result.run_dir / "best.pt").read_bytes()
    # The same settings, finished: nothing to do (a second `make train` is a no-op).
    again = train(tiny_config(corpus, runs, "smoke"), show_progress=False)
    assert again.metrics == result.metrics
    assert (result.run_dir / "best.pt").read_bytes() == before
    # Other settings: refused, naming them.
    with pytest.raises(RunExistsError, match=r"other settings \(seed: run has 0, asked 5\)"):
        train(tiny_config(corpus, runs, "smoke", seed=5), show_progress=False)
    with pytest.raises(RunExistsError, match=r"epochs: run has 1, asked 2"):
        train(tiny_config(corpus, runs, "smoke", epochs=2), show_progress=False)


def test_unfinished_run_asks_for_resume_or_overwrite(corpus: Path, tmp_path: Path) -> None:
    train(tiny_config(corpus, tmp_path, "cut"), show_progress=False)
    (tmp_path / "cut" / "metrics.json").write_text(json.dumps({"final": None}))
    with pytest.raises(RunExistsError, match=r"unfinished run .* pass --resume"):
        train(tiny_config(corpus, tmp_path, "cut"), show_progress=False)
    fresh = train(tiny_config(corpus, tmp_path, "cut"), overwrite=True, show_progress=False)
    # Overwritten by a whole new run: finished, its final reports written to disk.
    on_disk = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(fresh.metrics))
    assert on_disk["epochs_completed"] == 1
    assert {"dev", "eval", "best_epoch"} <= set(on_disk["final"])
    assert 0.0 <= on_disk["final"]["eval"]["eer"] <= 1.0


def test_resume_without_a_run_is_refused(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"holds no last\.pt"):
        train(tiny_config(corpus, tmp_path), resume=True, show_progress=False)


# --------------------------------------------------------------------------- sampling


def test_epoch_plan_depends_on_seed_and_epoch_only() -> None:
    targets = [0] * 10 + [1] * 90
    a, b = EpochSampler(targets, 3, "weights"), EpochSampler(targets, 3, "weights")
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    order, _ = a.epoch_plan()
    assert sorted(order.tolist()) == list(range(100))  # a permutation: each file once


def test_balanced_sampler_draws_both_classes_equally() -> None:
    targets = [0] * 100 + [1] * 900  # the 1:9 of real anti-spoofing sets
    sampler = EpochSampler(targets, 0, "sampler")
    drawn = Counter(targets[i] for i, _ in sampler)
    assert abs(drawn[0] - 500) < 60 and abs(drawn[1] - 500) < 60
    weights = class_weights(targets)
    assert weights.tolist() == pytest.approx([5.0, 5.0 / 9.0])


def test_ranks_split_one_epoch_plan_between_them() -> None:
    targets = [0, 1] * 25 + [1]  # 51 files: the shards pad by wrapping, like DistributedSampler
    single = EpochSampler(targets, 7, "weights")
    ranks = [EpochSampler(targets, 7, "weights", rank=r, world_size=2) for r in range(2)]
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 26
    interleaved = [item for pair in zip(*shards, strict=True) for item in pair]
    assert interleaved[:51] == list(single)


# --------------------------------------------------------------------------- CLIs


def test_help_documents_every_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "train", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0
    for flag in (
        "--format",
        "--root",
        "--name",
        "--runs-dir",
        "--resume",
        "--overwrite",
        "--seed",
        "--window-samples",
        "--hop-samples",
        "--frontend",
        "--epochs",
        "--batch-size",
        "--lr",
        "--grad-clip",
        "--balance",
        "--augment",
        "--device",
        "--threads",
        "--workers",
    ):
        assert flag in done.stdout, flag


def test_cli_bad_input_exits_2_with_the_reason(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "LA", {"train": (0, 6), "dev": (2, 2), "eval": (2, 2)})
    done = subprocess.run(
        _cli(root, tmp_path / "runs", "bad"), cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "error: the train split" in done.stderr and "one class only" in done.stderr
    assert "Traceback" not in done.stderr


def test_evaluate_cli_prints_one_json_object(smoke_run, corpus: Path) -> None:
    result = smoke_run
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.evaluate",
            "--checkpoint",
            str(result.run_dir / "best.pt"),
            "--format",
            "asvspoof2019",
            "--root",
            str(corpus),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["eer"] == pytest.approx(result.metrics["final"]["eval"]["eer"])
    assert set(report["per_attack_eer"]) == {"A01", "A07"}
    assert 0.0 <= report["accuracy"] <= 1.0

    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.evaluate",
            "--checkpoint",
            str(result.run_dir / "nope.pt"),
            "--format",
            "asvspoof2019",
            "--root",
            str(corpus),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr


# --------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(corpus: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this interpreter")
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "train",
        *_cli(corpus, tmp_path, "ddp", "--epochs", "2")[3:],
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2
    # Each rank took half of each epoch: 16 files / 2 ranks / batch 8 = 1 step per rank.
    assert [e["steps"] for e in metrics["epochs"]] == [2, 2]
    assert "world size 2" in (tmp_path / "ddp" / "train.log").read_text()
    assert (tmp_path / "ddp" / "scores_eval.txt").exists()
