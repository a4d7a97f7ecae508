"""The benchmark report: the markdown table, the JSON document, the PNG plots.

Everything here works from the report dictionary alone (the JSON), so a table or a plot
can be redrawn from a saved results file: `python -m benchmarks --from-json FILE`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = (
    "format",
    "runtime",
    "threads",
    "status",
    "size",
    "EER",
    "agree",
    "median ms",
    "p90 ms",
    "p99 ms",
    "CPU ms",
    "RTF",
    "cold start",
    "RSS",
    "MAC/s (% peak)",
    "vs PyTorch",
)


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 10 * 1024 * 1024:
        return f"{value / 1024 / 1024:.1f} MiB"
    return f"{value / 1024:.0f} KiB"


def _percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _runtime(row: dict[str, Any]) -> str:
    text = row["runtime"]
    if row.get("runtime_version"):
        text += f" {row['runtime_version']}"
    if row["environment"] != "current":
        text += f" ({row['environment']})"
    return text


def _efficiency(row: dict[str, Any]) -> str:
    if row.get("macs_per_s") is None:
        return "-"
    text = f"{row['macs_per_s'] / 1e9:.2f} G"
    if row.get("efficiency") is not None:
        text += f" ({row['efficiency'] * 100:.0f}%)"
    return text


def table_rows(report: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    """The table's cells, and the numbered notes (reasons of rows that did not run)."""
    notes: list[str] = []
    cells = []
    for row in report["rows"]:
        status = row["status"]
        if row["status"] != "ok":
            reason = row.get("reason") or "no reason given"
            if reason not in notes:
                notes.append(reason)
            status = f"{status} [{notes.index(reason) + 1}]"
        latency = row.get("latency_ms") or {}
        rss = row.get("peak_rss_bytes")
        cold = row.get("cold_start_ms")
        speedup = row.get("speedup_vs_pytorch")
        cells.append(
            [
                row["format_label"],
                _runtime(row),
                str(row["threads"]),
                status,
                _size(row.get("size_bytes")),
                _percent(row.get("eer")),
                _percent(row.get("agreement"), 1),
                _ms(latency.get("median")),
                _ms(latency.get("p90")),
                _ms(latency.get("p99")),
                _ms(row.get("cpu_ms_per_window")),
                "-" if row.get("rtf") is None else f"{row['rtf']:.4f}",
                "-" if cold is None else f"{cold / 1000:.2f} s",
                "-" if not rss or status != "ok" else f"{rss / 1024 / 1024:.0f} MiB",
                _efficiency(row),
                "-" if speedup is None else f"{speedup:.2f}x",
            ]
        )
    return cells, notes


def markdown_table(report: dict[str, Any]) -> str:
    cells, notes = table_rows(report)
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    if notes:
        lines.append("")
        lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines)


def headline(report: dict[str, Any], threads: int = 1) -> list[str]:
    """Sentences on TFLite int8 against PyTorch eager and TFLite fp32 at `threads`."""
    out = []
    for item in report.get("comparisons", []):
        if item["threads"] != threads:
            continue
        where = f"{item['runtime']} {item.get('runtime_version') or ''}".strip()
        if item["environment"] != "current":
            where += f" in {item['environment']}"
        parts = []
        if item.get("int8_vs_pytorch") is not None:
            parts.append(f"{item['int8_vs_pytorch']:.2f}x PyTorch eager's speed")
        if item.get("int8_vs_tflite_fp32") is not None:
            parts.append(f"{item['int8_vs_tflite_fp32']:.2f}x TFLite fp32's")
        by_cpu = [
            f"{item[key]:.2f}x {name}"
            for key, name in (
                ("int8_vs_pytorch_by_cpu", "PyTorch's"),
                ("int8_vs_tflite_fp32_by_cpu", "fp32's"),
            )
            if item.get(key) is not None
        ]
        if parts:
            out.append(
                f"TFLite int8 on {where}, {threads} thread(s): {item['int8_median_ms']:.3f} ms "
                f"per window, "
                + " and ".join(parts)
                + " (>1 = int8 faster)"
                + (f"; by CPU time per window {' and '.join(by_cpu)}" if by_cpu else "")
            )
    return out


def render(report: dict[str, Any]) -> str:
    """The terminal report: context, table, comparisons, how the peak was derived."""
    machine = report["machine"]
    cpu = machine["cpu"]
    bundle = report["bundle"]
    clock = f", {cpu['clock_ghz']:.2f} GHz" if cpu.get("clock_ghz") else ""
    lines = [
        f"# Benchmark: {bundle['model']} ({bundle['path']})",
        "",
        f"{report['created']} on {report['host']}: {cpu['model']} ({cpu['arch']}, "
        f"{cpu['cores']} cores{clock}; {' '.join(cpu['flags']) or 'no SIMD flags'}); "
        f"Python {machine['python']}; load average {machine.get('loadavg_before')} -> "
        f"{machine.get('loadavg_after')}",
        f"Model: {bundle['parameters']:,} parameters, {bundle['macs_per_window'] / 1e6:.2f} M "
        f"MACs per {bundle['window_samples']}-sample window, hop {bundle['hop_ms']:.0f} ms. "
        f"{report['settings']['rounds']} rounds, {report['settings']['seconds_per_row']:g} s "
        f"measured per row, one fresh process per row per round; {report['duration_s']:.0f} s "
        f"in all.",
        "",
        markdown_table(report),
        "",
    ]
    lines += [f"- {sentence}" for sentence in headline(report)]
    lines += [
        "",
        "Definitions: "
        + report["definitions"]["latency"]
        + ". "
        + report["definitions"]["rtf"]
        + ". Cold start: "
        + report["definitions"]["cold_start"]
        + ". "
        + report["definitions"]["efficiency"]
        + "; vs PyTorch: "
        + report["definitions"]["speedup_vs_pytorch"]
        + ". "
        + str(report.get("accuracy_source", ""))
        + ".",
        "",
        "Compute peaks:",
    ]
    for peak in report["peaks"]:
        value = (
            "unknown" if peak["macs_per_s"] is None else f"{peak['macs_per_s'] / 1e9:.1f} GMAC/s"
        )
        lines.append(
            f"- {peak['precision']}, {peak['threads']} thread(s): {value}. {peak['derivation']}"
        )
        if peak.get("problem"):
            lines.append(f"  (measurement failed: {peak['problem']})")
    unstable = [
        r for r in report["rows"] if r["status"] == "ok" and (r.get("round_spread") or 0) > 0.15
    ]
    if unstable:
        lines.append("")
        lines.append(
            "Unstable medians (per-round medians differ by more than 15%; the machine was busy): "
            + ", ".join(f"{r['key']} ({r['round_spread'] * 100:.0f}%)" for r in unstable)
        )
    if report.get("pi_estimate"):
        from benchmarks.pi_estimate import markdown as estimate_markdown

        lines += [
            "",
            f"Raspberry Pi: {report['pi_estimate']['label']} (sources and method: "
            "docs/benchmarks.md; run `python -m benchmarks` on the Pi for real figures):",
            "",
            estimate_markdown(report["pi_estimate"]),
        ]
    above = [r["key"] for r in report["rows"] if (r.get("efficiency") or 0) > 1.0]
    if above:
        lines += [
            "",
            "Above 100% of the measured peak (the row's kernel beat numpy's BLAS GEMM, or the "
            "GEMM ran at a busier moment): " + ", ".join(above),
        ]
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- plots


def _plot_label(row: dict[str, Any]) -> str:
    env = "" if row["environment"] == "current" else f" {row['environment']}"
    return f"{row['format_label']} / {row['runtime']}{env} / {row['threads']}t"


def write_plots(report: dict[str, Any], stem: Path) -> tuple[list[Path], list[str]]:
    """`<stem>-latency.png` and `<stem>-accuracy.png`; returns (written, notes on what was not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ["matplotlib is not installed here: no plots (the JSON has every figure)"]
    ok = [r for r in report["rows"] if r["status"] == "ok" and r.get("latency_ms")]
    if not ok:
        return [], ["no row ran: no plots"]
    stem.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    notes: list[str] = []

    stats = [
        {
            "label": _plot_label(r),
            "med": r["latency_ms"]["p50"],
            "q1": r["latency_ms"]["p25"],
            "q3": r["latency_ms"]["p75"],
            "whislo": r["latency_ms"]["p1"],
            "whishi": r["latency_ms"]["p99"],
            "fliers": [],
        }
        for r in ok
    ]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(stats) + 1.6))
    ax.bxp(stats, vert=False, showfliers=False)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("latency per window (ms, log scale); box p25-p75, line median, whiskers p1-p99")
    ax.set_title(f"{report['bundle']['model']} on {report['machine']['cpu']['model']}")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(f"{stem}-latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    with_eer = [r for r in ok if r.get("eer") is not None]
    if not with_eer:
        notes.append("no EER in the bundle's parity report: no accuracy-against-latency plot")
        return written, notes
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"pytorch": "o", "onnx": "s", "tflite_fp32": "^", "tflite_int8": "D"}
    for index, r in enumerate(with_eer):
        color = "tab:blue" if r["threads"] == 1 else "tab:orange"
        ax.scatter(
            r["latency_ms"]["median"],
            r["eer"] * 100,
            marker=markers.get(r["format"], "x"),
            color=color,
            s=50,
        )
        ax.annotate(
            f"{r['runtime']}{'' if r['environment'] == 'current' else ' ' + r['environment']}"
            f" {r['threads']}t",
            (r["latency_ms"]["median"], r["eer"] * 100),
            fontsize=7,
            xytext=(4, 3 + 9 * (index % 3)),  # staggered: rows of equal EER sit close together
            textcoords="offset points",
        )
    for key, marker in markers.items():
        ax.scatter([], [], marker=marker, color="gray", label=key)
    ax.scatter([], [], marker="o", color="tab:blue", label="1 thread")
    ax.scatter([], [], marker="o", color="tab:orange", label="all cores")
    ax.set_xscale("log")
    ax.set_xlabel("median latency per window (ms, log scale)")
    ax.set_ylabel("EER on the held-out split (%)")
    ax.set_title("accuracy against latency (lower left is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(f"{stem}-accuracy.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written, notes
