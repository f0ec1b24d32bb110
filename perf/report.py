"""The perf suite's report: a Markdown page with the ratios first, PNG plots, and the raw figures as JSON."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any


def _plot_throughput(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    bars = {k: v["mb_per_s"] for k, v in results.get("retrieve", {}).items() if isinstance(v, dict) and "mb_per_s" in v}
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(bars)))
    names = list(bars)
    ax.barh(names, [bars[n] for n in names], color=["#3b7dd8" if n.startswith("box") else "#999999" for n in names])
    ax.set_xlabel("MB/s (one client, whole study)")
    ax.invert_yaxis()
    for i, n in enumerate(names):
        ax.text(bars[n], i, f" {bars[n]:.0f}", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_concurrency(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series = results.get("concurrency", {})
    if not series:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, runs in series.items():
        clients = [r["clients"] for r in runs]
        left.plot(clients, [r["aggregate_mb_per_s"] for r in runs], marker="o", label=name)
        right.plot(clients, [r["p95_s"] for r in runs], marker="o", label=name)
    left.set_xlabel("concurrent clients")
    left.set_ylabel("aggregate MB/s")
    right.set_xlabel("concurrent clients")
    right.set_ylabel("p95 latency (s)")
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_wan(results: dict[str, Any], path: Path) -> bool:
    """Each WAN figure's time as a ratio to its link's limit (1 = the physics), grouped by profile."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figures = results.get("wan", {}).get("figures", [])
    if not figures:
        return False
    labels = [f"{f['profile']}: {f['name']}" for f in figures]
    ratios = [f["ratio"] for f in figures]
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.4 * len(figures)))
    colours = ["#999999" if "Orthanc" in f["name"] else "#3b7dd8" for f in figures]
    ax.barh(labels, ratios, color=colours)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("time ÷ the link's limit (bytes ÷ rate + round trips)")
    ax.invert_yaxis()
    for i, r in enumerate(ratios):
        ax.text(r, i, f" {r:.2f}", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _wan_lines(results: dict[str, Any], directory: Path) -> list[str]:
    """The WAN section: the emulator's own accuracy, then each figure against the link's limit."""
    wan = results.get("wan")
    if not wan:
        return []
    lines = ["", "## WAN links (emulated: namespace + tbf + delay relay, perf/wan.py)", ""]
    lines += ["### The emulator against its nominal figures", "",
              "| profile | nominal | measured rate | rate ratio | RTT (median, min–max) | RTT ratio | "
              "bulk / limit | new connection |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in wan.get("check", []):
        lines.append(
            f"| {c['profile']} | {c['nominal_mbit_s']:.0f} Mbit/s, {c['nominal_rtt_ms']:.0f} ms | "
            f"{c['mbit_s']} Mbit/s | {c['rate_ratio']} | {c['rtt_ms']} ms ({c['rtt_min_ms']}–{c['rtt_max_ms']}) | "
            f"{c['rtt_ratio']} | {c['bulk_total_s']} / {c['bulk_limit_s']} s ({c['bulk_ratio_to_limit']}×, "
            f"{c['bulk_mb']} MB) | {c['new_connection_ms']} ms |"
        )
    lines += ["", "### Figures against the link's limit (same run, same link)", "",
              "| profile | what | MB | time (s) | limit (s) | ratio | details |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    skip = {"profile", "name", "mb", "seconds", "limit_s", "ratio"}
    for f in wan.get("figures", []):
        details = ", ".join(f"{k} {v}" for k, v in f.items() if k not in skip)
        lines.append(
            f"| {f['profile']} | {f['name']} | {f['mb']} | {f['seconds']} | {f['limit_s']} | {f['ratio']} | {details} |"
        )
    if _plot_wan(results, directory / "wan.png"):
        lines += ["", "![WAN figures against the limit](wan.png)"]
    if wan.get("notes"):
        lines += [""] + [f"- {n}" for n in wan["notes"]]
    return lines


def write_report(results: dict[str, Any], directory: Path) -> Path:
    """Write report.md, results.json and the plots under `directory`; return the report's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["# drimbox perf report", ""]
    lines.append(f"{results.get('date', '')} — {platform.node()} — {results.get('machine', '')}")
    lines.append("")
    lines.append("## Targets (ratios, same run)")
    lines.append("")
    lines.append("| target | measured | goal | met |")
    lines.append("|---|---|---|---|")
    for t in results.get("targets", []):
        met = "yes" if t["met"] else ("n/a" if t["met"] is None else "**no**")
        lines.append(f"| {t['name']} | {t['value']} | {t['goal']} | {met} |")
    lines.append("")
    lines.append("## Retrieve (one client, whole study)")
    lines.append("")
    lines.append("| path | MB | MB/s | first byte (ms) | total (s) |")
    lines.append("|---|---|---|---|---|")
    for name, f in results.get("retrieve", {}).items():
        lines.append(
            f"| {name} | {f['bytes'] / 1e6:.0f} | {f['mb_per_s']:.0f} | {f['ttfb_s'] * 1000:.0f} | {f['total_s']:.2f} |"
        )
    if _plot_throughput(results, directory / "throughput.png"):
        lines += ["", "![throughput](throughput.png)"]
    lines += ["", "## Metadata and QIDO", "", "| request | time (ms) |", "|---|---|"]
    for name, f in {**results.get("metadata", {}), **results.get("qido", {})}.items():
        lines.append(f"| {name} | {f['total_s'] * 1000:.1f} |")
    if results.get("concurrency"):
        lines += [
            "",
            "## Concurrent clients (warm)",
            "",
            "| path | clients | aggregate MB/s | p50 (s) | p95 (s) |",
            "|---|---|---|---|---|",
        ]
        for name, runs in results["concurrency"].items():
            for r in runs:
                lines.append(f"| {name} | {r['clients']} | {r['aggregate_mb_per_s']} | {r['p50_s']} | {r['p95_s']} |")
        if _plot_concurrency(results, directory / "concurrency.png"):
            lines += ["", "![concurrency](concurrency.png)"]
    if results.get("first_image"):
        first = results["first_image"]
        lines += [
            "",
            f"## First image in the browser ({first['study']}, Proxy box, headless Chromium)",
            "",
            "Report link opened (logged in) → the viewer's `first-image` mark; cold = box cache emptied and a fresh "
            "browser profile.",
            "",
            "| case | median (ms) | target (ms) | runs (ms) |",
            "|---|---|---|---|",
        ]
        for kind in ("cold", "warm"):
            runs = ", ".join(f"{r['first_image_ms']:.0f}" for r in first["runs"][kind])
            lines.append(f"| {kind} | {first[f'{kind}_median_ms']:.0f} | ≤ {first[f'{kind}_target_ms']:.0f} | {runs} |")
    lines += _wan_lines(results, directory)
    if results.get("rss"):
        lines += ["", "## Memory", ""]
        for name, value in results["rss"].items():
            lines.append(f"- {name}: {value}")
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    path = directory / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
