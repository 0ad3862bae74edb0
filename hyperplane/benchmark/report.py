"""The results: the summary table, the ``results`` list of bench.json and the chart."""

from __future__ import annotations

import statistics
from pathlib import Path

from .middles import MIDDLES
from .suite import METRICS

KERNEL_NATS = ("kernel-nat", "kernel-nat-flowtable")       # the peers Hyperplane is held to
RATIO = {"kernel-nat": "ratio_to_kernel_nat",
         "kernel-nat-flowtable": "ratio_to_kernel_nat_flowtable"}


LIMITED_NOTE = ("* no loss even at the highest rate the generator reached: its CPU was the "
                "limit (with the first hops of the path, and other processes), not the middle")


def results(values: dict, limited: set = frozenset()) -> list[dict]:
    """Medians over repeats, one row per (test, middle), with the ratio to the kernel NAT."""
    out = []
    for metric, (unit, _) in METRICS.items():
        peers = {}
        for peer in KERNEL_NATS:
            v = values.get((metric, peer))
            peers[peer] = statistics.median(v) if v else None
        for middle in columns(m for _, m in values):
            v = values.get((metric, middle))
            if not v:
                continue
            med = statistics.median(v)
            out.append({"test": metric, "middle": middle, "value": med, "unit": unit,
                        "repeats": len(v), "limited_by_generator": (metric, middle) in limited,
                        **{RATIO[peer]: med / base if base else None
                           for peer, base in peers.items()}})
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


def columns(middles) -> list[str]:
    """The middles, then the placements of Hyperplane's forwarding thread ("hyperplane@cpu0"),
    whose worst is the "hyperplane" figure."""
    present = set(middles)
    return [m for m in MIDDLES if m in present] + sorted(present - set(MIDDLES))


def _ratios(by: dict, metric: str) -> list[str]:
    """Hyperplane's figure over each kernel NAT's, as table cells."""
    hp = by.get((metric, "hyperplane")) or {}
    return [f"{hp[RATIO[p]]:.2f}x" if hp.get(RATIO[p]) else "-" for p in KERNEL_NATS]


def table(rows: list[dict]) -> str:
    by = {(r["test"], r["middle"]): r for r in rows}
    cols = columns(r["middle"] for r in rows)
    lines = [("test", "unit", *cols, "hp/kernel-nat", "hp/flowtable", "better")]
    for metric, (unit, higher) in METRICS.items():
        if not any((metric, m) in by for m in cols):
            continue
        vals = [_cell(by, metric, m) for m in cols]
        lines.append((metric, unit, *vals, *_ratios(by, metric), "higher" if higher else "lower"))
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
    cols = columns(r["middle"] for r in rows)
    out = ["| test | unit | " + " | ".join(cols) + " | Hyperplane / kernel NAT | Hyperplane / "
           "flowtable |", "|---|---|" + "---|" * (len(cols) + 2)]
    for metric, (unit, higher) in METRICS.items():
        if not any((metric, m) in by for m in cols):
            continue
        vals = [_cell(by, metric, m) for m in cols]
        out.append(f"| {metric} | {unit}{'' if higher else ' (lower is better)'} | "
                   + " | ".join(vals + _ratios(by, metric)) + " |")
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
    """One panel per test, the middles side by side, and the loss curve of the 1-flow
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
    colours = {"routing": "#9e9e9e", "kernel-nat": "#4c78a8", "kernel-nat-flowtable": "#72b7b2",
               "hyperplane": "#f58518"}
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
