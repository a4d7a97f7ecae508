"""clad-agent's command line, settings (TOML + flags), and the deployment files."""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device.cli import _parser, listen_settings, main
from device.config import (
    ApiSettings,
    ConfigError,
    Settings,
    check_token_file_mode,
    load_settings,
    resolve_token,
)
from tests.device_fixtures import (
    REPO,
    device_env,
    json_lines,
    noise,
    run_device,
    scenario,
    silence,
    write_wav,
)
from tests.device_fixtures import (
    run_deploy_script as _deploy,
)
from tests.hostile_audio import wav_claiming


@pytest.fixture
def mixed_files(tmp_path: Path) -> list[Path]:
    good_wav = write_wav(tmp_path / "speechlike.wav", scenario(48000), 48000)
    good_flac = tmp_path / "noise.flac"
    sf.write(good_flac, np.stack([noise(1.2, 44100, 0.3)] * 2, 1), 44100, format="FLAC")
    quiet = write_wav(tmp_path / "quiet.wav", silence(0.5, 16000), 16000)
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good_wav.read_bytes()[:5000])
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n")
    return [good_wav, truncated, good_flac, text, tmp_path / "missing.mp3", quiet]


def test_score_reports_each_bad_file_and_goes_on(fixture_bundle, mixed_files) -> None:
    out = run_device(["score", *map(str, mixed_files), "--bundle", str(fixture_bundle), "--json"])
    assert out.returncode == 1  # some files failed
    lines = json_lines(out.stdout)
    assert [line["file"] for line in lines] == [str(p) for p in mixed_files]
    good, truncated, flac, text, missing, quiet = lines
    for result in (good, flac, quiet):
        assert set(result) == {
            "file",
            "score",
            "decision",
            "windows",
            "silent_windows",
            "duration_s",
        }
    assert good["decision"] == "bonafide" and good["duration_s"] == pytest.approx(3.5)
    assert flac["decision"] == "spoof" and flac["score"] > 0.8
    assert quiet["decision"] == "silence"
    for bad in (truncated, text, missing):
        assert set(bad) == {"file", "error"}
    assert "truncated WAV" in truncated["error"]
    assert "expected WAV, FLAC, OGG or MP3" in text["error"]
    assert missing["error"] == "file not found"
    assert "3 of 6 file(s) could not be scored" in out.stderr.decode()


def test_score_all_good_exits_0_and_human_output(fixture_bundle, mixed_files) -> None:
    good = [str(mixed_files[0]), str(mixed_files[2])]
    out = run_device(["score", *good, "--bundle", str(fixture_bundle), "--model", "fp32"])
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode().splitlines()
    assert text[0].startswith(f"{good[0]}: bonafide") and "P(spoof)=" in text[0]
    assert text[1].startswith(f"{good[1]}: spoof")


def test_score_with_a_bad_bundle_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["score", "x.wav", "--bundle", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_listen_without_a_bundle_exits_2(capsys) -> None:
    assert main(["listen", "--source", "stdin", "--rate", "16000"]) == 2
    assert "no bundle" in capsys.readouterr().err


def test_listen_stdin_without_a_rate_exits_2(fixture_bundle, capsys) -> None:
    assert main(["listen", "--bundle", str(fixture_bundle), "--source", "stdin"]) == 2
    assert "give its sample rate with --rate" in capsys.readouterr().err


# --------------------------------------------------------------------------- settings


def test_example_settings_file_loads() -> None:
    settings = load_settings(REPO / "deploy" / "clad-agent.toml")
    assert settings.model.bundle == "/opt/clad-agent/bundle"
    assert settings.model.model_format == "int8" and settings.source.kind == "mic"
    assert settings.events.file == "/var/lib/clad-agent/events.jsonl"
    assert settings.api.listen == "127.0.0.1:8787"
    # Every key the example shows is a real setting with the default documented next to it,
    # except the ones it sets for the Pi.
    defaults = Settings()
    assert settings.decision == defaults.decision
    assert settings.source == defaults.source


def test_settings_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("[decision]\nsmothing_windows = 3\n")
    with pytest.raises(
        ConfigError, match=r"a\.toml \[decision\]: unknown setting 'smothing_windows'"
    ):
        load_settings(path)
    path.write_text("[decision]\nmargin = 'wide'\n")
    with pytest.raises(ConfigError, match=r"margin: expected float, got str 'wide'"):
        load_settings(path)
    path.write_text("[decision]\nmargin = 0.9\n")
    with pytest.raises(ConfigError, match=r"decision.margin: expected a value in \[0, 0.5\)"):
        load_settings(path)
    path.write_text("[speaker]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[speaker\]"):
        load_settings(path)
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)
    with pytest.raises(ConfigError, match="settings file not found"):
        load_settings(tmp_path / "none.toml")
    path.write_text('[api]\nlisten = "8787"\n')
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        load_settings(path)


def test_flags_override_the_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[model]\nbundle = "/b"\nnum_threads = 2\n'
        '[source]\nkind = "mic"\ndevice = "USB"\nchunk_ms = 32\n'
        "[decision]\nsmoothing_windows = 5\n"
        "[events]\nheartbeat_s = 10\n"
    )
    args = _parser().parse_args(
        [
            "listen",
            "--config",
            str(path),
            "--source",
            "/audio/a.wav",
            "--margin",
            "0.1",
            "--model",
            "fp32",
            "--json",
        ]
    )
    settings = listen_settings(args)
    assert settings.model.bundle == "/b" and settings.model.num_threads == 2  # from the file
    assert settings.model.model_format == "fp32"  # flag
    assert settings.source.kind == "file" and settings.source.path == "/audio/a.wav"  # flag
    assert settings.source.device == "USB" and settings.source.chunk_ms == 32.0  # file
    assert settings.decision.smoothing_windows == 5 and settings.decision.margin == 0.1
    assert settings.events.heartbeat_s == 10.0 and settings.events.json is True


def test_listen_runs_from_a_settings_file(fixture_bundle, tmp_path: Path) -> None:
    audio = write_wav(tmp_path / "a.wav", scenario(16000), 16000)
    events = tmp_path / "ev" / "events.jsonl"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[model]\nbundle = "{fixture_bundle}"\n'
        f'[source]\nkind = "file"\npath = "{audio}"\n'
        f'[events]\nstdout = false\nfile = "{events}"\nevery_window = true\n'
    )
    out = run_device(["listen", "--config", str(config), "--smoothing-windows", "2"])
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b""
    lines = json_lines(events.read_text())
    start = lines[0]
    assert start["settings"]["decision"]["smoothing_windows"] == 2
    assert start["settings"]["events"]["every_window"] is True
    assert start["model_format"] == "int8" and start["runtime"] == "ai_edge_litert.interpreter"
    assert sum(e["type"] in ("window", "decision") for e in lines) == 27
    assert lines[-1]["type"] == "stop" and lines[-1]["reason"] == "end of stream"


# --------------------------------------------------------------------------- deployment


def test_systemd_unit_is_hardened_and_valid(tmp_path: Path) -> None:
    unit_path = REPO / "deploy" / "clad-agent.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive
    unit.read(unit_path)
    service = unit["Service"]
    assert service["User"] == "clad" and service["SupplementaryGroups"] == "audio"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # bad settings: a restart cannot help
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) > 0
    assert service["MemoryDenyWriteExecute"] == "yes" and service["ProtectProc"] == "invisible"
    for key in ("MemoryMax", "TasksMax", "LimitNOFILE", "SystemCallFilter", "RestrictRealtime"):
        assert service.get(key), key
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert "/var/lib/clad-agent" in service["ReadWritePaths"].split()
    assert service["ExecStart"].endswith("listen --config /etc/clad-agent/clad-agent.toml")
    assert service["KillSignal"] == "SIGTERM"
    # The example settings write events where the unit lets the service write.
    events_file = load_settings(REPO / "deploy" / "clad-agent.toml").events.file
    assert events_file.startswith("/var/lib/clad-agent/")
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    checked = tmp_path / "clad-agent.service"
    checked.write_text(
        unit_path.read_text().replace(
            "ExecStart=/opt/clad-agent/venv/bin/clad-agent", "ExecStart=/bin/true"
        )
    )
    out = subprocess.run(
        ["systemd-analyze", "verify", str(checked)], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(checked)],
        capture_output=True,
        text=True,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure is not None, security.stdout[-2000:] + security.stderr
    assert float(exposure.group(1)) <= 2.0  # 3.5 before the sandboxing directives


_MDWE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
    sys.exit(77)
from device.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("model", ["int8", "fp32"])
def test_scoring_works_under_memory_deny_write_execute(fixture_bundle, tmp_path, model) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: the kernel's own MDWE (prctl) must not
    break LiteRT/XNNPACK or the decoder (soundfile's BytesIO reader did: it needs W+X)."""
    path = write_wav(tmp_path / "a.wav", scenario(16000), 16000)
    args = ["score", str(path), "--bundle", str(fixture_bundle), "--json", "--model", model]
    out = subprocess.run(
        [sys.executable, "-c", _MDWE, *args], cwd=REPO, env=device_env(), capture_output=True
    )
    if out.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert json_lines(out.stdout)[0]["decision"] == "bonafide"


def test_deploy_dry_run_prints_every_step(fixture_bundle) -> None:
    out = _deploy("pi@raspberrypi.local", str(fixture_bundle), DRY_RUN="1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for expected in (
        "+ ssh pi@raspberrypi.local",
        "tar -C",
        "apt-get install -y -qq --no-install-recommends python3-venv python3-dev portaudio19-dev",
        "useradd --system --user-group",
        "--groups audio clad",
        "--no-deps -r /opt/clad-agent/app/requirements/device.txt",
        "pyaudio==0.2.14",
        "/etc/systemd/system/clad-agent.service",
        "+ systemctl enable clad-agent.service",
        "+ systemctl restart clad-agent.service",
    ):
        assert expected in text, expected


def test_deploy_refuses_bad_arguments(tmp_path: Path) -> None:
    out = _deploy("pi@host")
    assert out.returncode == 2 and "usage:" in out.stderr
    out = _deploy("pi@host", str(tmp_path), DRY_RUN="1")
    assert out.returncode == 1 and "expected a bundle directory with manifest.json" in out.stderr
    out = _deploy("-oProxyCommand=x", str(tmp_path), DRY_RUN="1")
    assert out.returncode == 2 and "expected user@host" in out.stderr


def test_deploy_copies_device_and_bundle(fixture_bundle, tmp_path: Path) -> None:
    """The copy path for real (tar through the ssh pipe) with a stand-in for ssh and sudo.

    There is no Pi to reach from here: `ssh` is replaced by a script that runs the remote
    command in a local directory standing for the Pi user's home, and `sudo` by one that runs
    the installer in its own dry-run mode (root, apt and systemd are the Pi's business).
    """
    home = tmp_path / "pi-home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(
        "#!/usr/bin/env bash\n"
        "while [[ $1 == -* ]]; do shift; done\n"  # options (-t)
        "shift\n"  # user@host
        f'cd "{home}" && exec bash -c "$*"\n'
    )
    (bin_dir / "sudo").write_text('#!/usr/bin/env bash\nexec env DRY_RUN=1 "$@"\n')
    for tool in ("ssh", "sudo"):
        (bin_dir / tool).chmod(0o755)
    out = _deploy(
        "pi@raspberrypi.local", str(fixture_bundle), PATH=f"{bin_dir}:{os.environ['PATH']}"
    )
    assert out.returncode == 0, out.stderr
    staging = home / ".cache" / "clad-agent-deploy"
    for name in (
        "device/cli.py",
        "device/audio.py",
        "requirements/device.txt",
        "deploy/clad-agent.service",
        "deploy/install-on-pi.sh",
    ):
        assert (staging / name).read_bytes() == (REPO / name).read_bytes(), name
    assert not list(staging.glob("device/__pycache__"))
    for model in fixture_bundle.iterdir():
        copied = staging / "bundle" / model.name
        assert (
            hashlib.sha256(copied.read_bytes()).digest()
            == hashlib.sha256(model.read_bytes()).digest()
        )
    assert "+ systemctl restart clad-agent.service" in out.stdout  # the installer ran there


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (scripts/install-system-deps.sh installs it)")
    scripts = sorted(
        [*REPO.glob("scripts/*.sh"), *REPO.glob("scripts/arm/*.sh"), *REPO.glob("deploy/*.sh")]
    )
    assert (
        REPO / "scripts" / "deploy.sh" in scripts
        and REPO / "deploy" / "install-on-pi.sh" in scripts
    )
    out = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_agent_load_benchmark_reports_its_figures(fixture_bundle, tmp_path: Path) -> None:
    from benchmarks.agent_load import main as agent_load

    out = tmp_path / "agent_load.json"
    assert agent_load(["--bundle", str(fixture_bundle), "--seconds", "1.5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["audio_s"] == 1.5 and report["windows"] == 11 and report["overflows"] == 0
    assert report["cpu_percent_of_one_core"] > 0 and report["peak_rss_mib"] > 10
    assert report["latency_ms"]["n"] == 11 and report["latency_ms"]["p50"] > 0


def test_score_goes_on_past_hostile_files(fixture_bundle, tmp_path: Path) -> None:
    good = write_wav(tmp_path / "good.wav", noise(1.0, 16000), 16000)
    huge_rate = wav_claiming(tmp_path / "4mhz.wav", 4_000_037)
    many = tmp_path / "many.wav"
    sf.write(many, np.zeros((1600, 40), dtype=np.float32), 16000, subtype="PCM_16")
    tiny = write_wav(tmp_path / "ten.wav", noise(10 / 16000, 16000), 16000)
    long = write_wav(tmp_path / "long.wav", noise(3.0, 16000), 16000)
    files = [huge_rate, good, many, tiny, long]
    args = ["score", *map(str, files), "--bundle", str(fixture_bundle), "--json"]
    out = run_device([*args, "--max-audio-s", "2"])
    assert out.returncode == 1
    by_name = {Path(r["file"]).name: r for r in json_lines(out.stdout)}
    assert list(by_name) == [p.name for p in files]
    assert "expected 4000-384000 Hz" in by_name["4mhz.wav"]["error"]
    assert "40 channels declared" in by_name["many.wav"]["error"]
    assert by_name["ten.wav"]["error"].startswith("too short: 10 samples")
    assert "expected at most 2 s" in by_name["long.wav"]["error"]
    assert by_name["good.wav"]["decision"] in ("bonafide", "spoof")
    assert "4 of 5 file(s) could not be scored" in out.stderr.decode()


def test_score_goes_on_past_a_memory_error(fixture_bundle, tmp_path: Path, monkeypatch) -> None:
    """MemoryError from a library: made real, it would need the machine's memory exhausted
    (or an RLIMIT_AS that also breaks LiteRT's arena), so the front end is replaced to raise
    it for one file only."""
    from device import audio
    from device.runtime import Scorer, score_files

    real = audio.windows_for_scoring

    def exhausting(path, *args, **kwargs):
        if Path(path).name == "boom.wav":
            raise MemoryError("Unable to allocate 3.2 GiB for an array")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(audio, "windows_for_scoring", exhausting)
    boom = write_wav(tmp_path / "boom.wav", noise(1.0, 16000), 16000)
    good = write_wav(tmp_path / "good.wav", noise(1.0, 16000), 16000)
    results = list(score_files(Scorer(fixture_bundle, "int8"), [boom, good]))
    assert results[0] == {
        "file": str(boom),
        "error": "MemoryError: Unable to allocate 3.2 GiB for an array",
    }
    assert "score" in results[1]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[model]\nthreshold = 1.0\n", "model.threshold: expected a P(spoof) strictly between"),
        ("[model]\nthreshold = 0.0\n", "strictly between 0 and 1"),
        ("[model]\nthreshold = 0.98\n", "a spoof alarm can never be raised, or never end"),
        ("[model]\nsilence_floor_dbfs = 100\n", "expected -200 < floor < 0 dBFS, got 100.0"),
        ("[decision]\nsmoothing_windows = 1000000\n", "smoothing_windows: expected 1-100"),
        ("[decision]\nthreshold = 0.5\n", "unknown setting 'threshold'"),
        ("[source]\nchunk_ms = 1e9\n", "source.chunk_ms: expected 1-5000 ms, got 1000000000.0"),
        ("[source]\nsample_rate = 4000037\n", "expected 0 (automatic) or 4000-384000 Hz"),
        ("[source]\nchannels = 1000\n", "source.channels: expected 1-32"),
    ],
)
def test_settings_that_make_an_alarm_impossible_are_refused(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(path)


def test_listen_with_an_impossible_threshold_exits_2(fixture_bundle, capsys) -> None:
    args = ["listen", "--bundle", str(fixture_bundle), "--source", "stdin", "--rate", "16000"]
    assert main([*args, "--threshold", "1.0"]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err


@pytest.mark.parametrize(("mode", "refused"), [(0o600, False), (0o644, True), (0o620, True)])
def test_a_token_file_others_can_read_or_write_is_refused(
    tmp_path: Path, mode: int, refused: bool
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(mode)
    api = ApiSettings(listen="0.0.0.0:8787", token_file=str(token))
    if refused:
        with pytest.raises(ConfigError, match=rf"mode {mode:04o}.*`chmod 0600 {token}`"):
            resolve_token(api, {})
    else:
        assert resolve_token(api, {}) == "s3cret"


def test_group_read_is_allowed_only_for_the_agents_own_group(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o640)
    own = os.stat(token)
    check_token_file_mode(token, own)  # created with our group: the deployment's 0640 is fine
    foreign_gid = max({os.getgid(), *os.getgroups()}) + 12345
    foreign = os.stat_result((*own[:5], foreign_gid, *own[6:]))
    with pytest.raises(ConfigError, match="mode 0640"):
        check_token_file_mode(token, foreign)


def test_every_cli_option_has_help_with_its_default() -> None:
    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in {"clad-agent": parser, **subparsers.choices}.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            text = action.help or ""
            takes_value = action.nargs != 0 and action.option_strings
            if not text or (takes_value and not ("default" in text or "required" in text)):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
