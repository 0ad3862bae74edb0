"""The results: the summary table, the ``results`` list of bench.json and the chart."""

from __future__ import annotations

import statistics
from pathlib import Path

from .middles import MIDDLES
from .suite import METRICS


LIMITED_NOTE = ("* no loss even at the highest rate the generator reached: its CPU was the "
                "limit (with the first hops of the path, and other processes), not the middle")


def results(values: dict, limited: set = frozenset()) -> list[dict]:
    """Medians over repeats, one row per (test, middle), with the ratio to the kernel NAT."""
    out = []
    for metric, (unit, _) in METRICS.items():
        knat = values.get((metric, "kernel-nat"))
        knat_med = statistics.median(knat) if knat else None
        for middle in MIDDLES:
            v = values.get((metric, middle))
            if not v:
                continue
            med = statistics.median(v)
            out.append({"test": metric, "middle": middle, "value": med, "unit": unit,
                        "repeats": len(v), "limited_by_generator": (metric, middle) in limited,
                        "ratio_to_kernel_nat": med / knat_med if knat_med else None})
    return out


def _cell(by: dict, metric: str, middle: str) -> str:
    r = by.get((metric, middle))
    if r is None:
        return "-"
    return _fmt(r["value"]) + ("*" if r.get("limited_by_generator") else "")


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if v >= 0.1 else f"{v:.3f}"


def table(rows: list[dict]) -> str:
    by = {(r["test"], r["middle"]): r for r in rows}
    lines = [("test", "unit", *MIDDLES, "hp/kernel-nat", "better")]
    for metric, (unit, higher) in METRICS.items():
        if not any((metric, m) in by for m in MIDDLES):
            continue
        vals = [_cell(by, metric, m) for m in MIDDLES]
        hp = by.get((metric, "hyperplane"))
        ratio = hp["ratio_to_kernel_nat"] if hp else None
        lines.append((metric, unit, *vals, f"{ratio:.2f}x" if ratio else "-",
                      "higher" if higher else "lower"))
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    text = []
    for n, r in enumerate(lines):
        text.append("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                              for i, c in enumerate(r)))
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    if any(r.get("limited_by_generator") for r in rows):
        text.append(LIMITED_NOTE)
    return "\n".join(text)


def markdown(rows: list[dict]) -> str:
    by = {(r["test"], r["middle"]): r for r in rows}
    out = ["| test | unit | " + " | ".join(MIDDLES) + " | Hyperplane / kernel NAT |",
           "|---|---|" + "---|" * (len(MIDDLES) + 1)]
    for metric, (unit, higher) in METRICS.items():
        if not any((metric, m) in by for m in MIDDLES):
            continue
        vals = [_cell(by, metric, m) for m in MIDDLES]
        hp = by.get((metric, "hyperplane"))
        ratio = f"{hp['ratio_to_kernel_nat']:.2f}x" if hp and hp["ratio_to_kernel_nat"] else "-"
        out.append(f"| {metric} | {unit}{'' if higher else ' (lower is better)'} | "
                   + " | ".join(vals) + f" | {ratio} |")
    if any(r.get("limited_by_generator") for r in rows):
        out += ["", LIMITED_NOTE]
    return "\n".join(out)


def loss_curves(samples: list[dict], test: str = "udp64-1flow") -> dict[str, list]:
    """(offered kpps, loss %) of every search trial of `test`, per middle."""
    out: dict[str, list] = {}
    for smp in samples:
        if smp.get("test") == test:
            out.setdefault(smp["middle"], []).extend(
                (t["offered_pps"] / 1e3, t["loss"] * 100) for t in smp.get("trials", []))
    return out


def chart(rows: list[dict], path: Path, title: str, curves: dict | None = None) -> str | None:
    """One panel per test, the three middles side by side, and the loss curve of the 1-flow
    small-packet search. Returns why not, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'hyperplane[bench]')"
    metrics = [m for m in METRICS if any(r["test"] == m for r in rows)]
    if not metrics:
        return "no results to draw"
    cols = 4
    nrows = (len(metrics) + bool(curves) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    colours = {"routing": "#9e9e9e", "kernel-nat": "#4c78a8", "hyperplane": "#f58518"}
    by = {(r["test"], r["middle"]): r for r in rows}
    for ax, metric in zip(axes.flat, metrics):
        unit, higher = METRICS[metric]
        vals = [by[(metric, m)]["value"] if (metric, m) in by else 0 for m in MIDDLES]
        bars = ax.bar(range(len(MIDDLES)), vals, color=[colours[m] for m in MIDDLES])
        for b, m in zip(bars, MIDDLES):
            ax.annotate(_cell(by, metric, m) if (metric, m) in by else "n/a",
                        (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(MIDDLES)), MIDDLES, fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.set_ylabel(unit + ("" if higher else " (lower better)"), fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.15)
    rest = list(axes.flat)[len(metrics):]
    if curves:
        ax = rest.pop(0)
        for m in MIDDLES:
            pts = sorted(curves.get(m, []))
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colours[m],
                           label=m, s=9)
        ax.axhline(0.1, color="black", linewidth=0.5, linestyle=":")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(bottom=0)
        ax.set_title("udp64-1flow: loss of every search trial", fontsize=9)
        ax.set_xlabel("offered kpps", fontsize=7)
        ax.set_ylabel("loss % (0.1% dotted)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in rest:
        ax.axis("off")
    note = "\n" + LIMITED_NOTE if any(r.get("limited_by_generator") for r in rows) else ""
    fig.suptitle(title + note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
