"""The experiment's report: statistics over seeds, experiment.json, the table and the plot.

Pure functions of run records ({task, arm, seed, protocol, fraction, test: {metric: value}}), tested on
synthetic numbers; midibert_jax/experiment.py runs the experiment and calls them.
"""

from __future__ import annotations

import io
import math
import os
import platform
from typing import Any, Iterable, Sequence

import numpy as np
from etils import epath

from midibert_jax import paths

VERSION = 1
ARMS = ("adversarial", "random", "none")
PROTOCOLS = ("probe", "finetune")
# Paired comparisons (a - b over the seeds both finished), in the order the paper's claim reads.
PAIRS = (("adversarial", "random"), ("adversarial", "none"), ("random", "none"))
# A verdict other than 'unclear' needs the paired t-test's p below this (and the margin beyond the seed sd).
ALPHA = 0.05


def machine_info() -> dict[str, Any]:
    """Where the numbers came from: platform, CPU model and ISA flags (Linux), JAX devices."""
    import jax  # pylint: disable=import-outside-toplevel

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "isa": []}
    cpuinfo = "/proc/cpuinfo"
    if os.path.exists(cpuinfo):
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:  # a local system file, not a run file
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    info["cpu"] = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
                    break
    devices = jax.devices()
    info.update(jax=jax.__version__, backend=jax.default_backend(), devices=len(devices),
                device_kind=devices[0].device_kind, processes=jax.process_count())
    return info



# ----------------------------------------------------------------------------- aggregation (pure)


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _groups(runs: Iterable[dict[str, Any]], metrics: Sequence[str]):
    """{(task, protocol, fraction, metric): {arm: {seed: value}}} of the runs' test metrics."""
    groups: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in runs:
        for metric in metrics:
            value = r["test"].get(metric)
            if value is not None:
                key = (r["task"], r["protocol"], float(r["fraction"]), metric)
                groups.setdefault(key, {}).setdefault(r["arm"], {})[int(r["seed"])] = float(value)
    return groups


def _order(key: tuple, metrics: Sequence[str]) -> tuple:
    task, protocol, fraction, metric = key
    return (task, PROTOCOLS.index(protocol) if protocol in PROTOCOLS else 9, fraction,
            list(metrics).index(metric) if metric in metrics else 9)


def summary_rows(runs: Iterable[dict[str, Any]], metrics: Sequence[str] = ("accuracy", "macro_f1", "piece_accuracy")
                 ) -> list[dict[str, Any]]:
    """Per task x protocol x fraction x metric x arm: n, mean and sd (ddof=1; None when n < 2) over the seeds."""
    rows = []
    groups = _groups(runs, metrics)
    for key in sorted(groups, key=lambda k: _order(k, metrics)):
        task, protocol, fraction, metric = key
        for arm in sorted(groups[key], key=lambda a: ARMS.index(a) if a in ARMS else 9):
            values = np.array(list(groups[key][arm].values()), np.float64)
            rows.append({"task": task, "protocol": protocol, "fraction": fraction, "metric": metric, "arm": arm,
                         "n": len(values), "mean": float(values.mean()),
                         "sd": float(values.std(ddof=1)) if len(values) > 1 else None})
    return rows


def paired_rows(runs: Iterable[dict[str, Any]], metrics: Sequence[str] = ("accuracy", "macro_f1", "piece_accuracy"),
                pairs: Sequence[tuple[str, str]] = PAIRS) -> list[dict[str, Any]]:
    """Per task x protocol x fraction x metric and pair (a, b): the differences a - b over the seeds both
    finished: n, mean, sd (ddof=1), and the paired t-test's t and two-sided p (None when n < 2 or the
    differences do not vary)."""
    from scipy import stats  # pylint: disable=import-outside-toplevel

    rows = []
    groups = _groups(runs, metrics)
    for key in sorted(groups, key=lambda k: _order(k, metrics)):
        task, protocol, fraction, metric = key
        for a, b in pairs:
            if a not in groups[key] or b not in groups[key]:
                continue
            seeds = sorted(set(groups[key][a]) & set(groups[key][b]))
            if not seeds:
                continue
            x = np.array([groups[key][a][s] for s in seeds], np.float64)
            y = np.array([groups[key][b][s] for s in seeds], np.float64)
            diff = x - y
            sd = float(diff.std(ddof=1)) if len(diff) > 1 else None
            if sd is not None and np.ptp(diff) <= 1e-9 * max(1.0, float(np.abs(diff).max())):
                sd = 0.0  # equal differences up to rounding (0.8 - 0.5 vs 0.7 - 0.4): no t-test
            t = p = None
            if sd:
                test = stats.ttest_rel(x, y)
                t, p = _finite(test.statistic), _finite(test.pvalue)
            rows.append({"task": task, "protocol": protocol, "fraction": fraction, "metric": metric, "a": a, "b": b,
                         "n": len(seeds), "seeds": seeds, "mean_diff": float(diff.mean()), "sd_diff": sd,
                         "t": t, "p": p})
    return rows


def summarize(runs: Sequence[dict[str, Any]], metrics: Sequence[str] = ("accuracy", "macro_f1", "piece_accuracy")
              ) -> dict[str, list[dict[str, Any]]]:
    """{"summary": summary_rows, "paired": paired_rows} of run records ({task, arm, seed, protocol,
    fraction, test: {metric: value}})."""
    return {"summary": summary_rows(runs, metrics), "paired": paired_rows(runs, metrics)}


def verdicts(report: dict[str, Any], metric: str = "accuracy", pairs: Sequence[tuple[str, str]] = PAIRS
             ) -> list[dict[str, Any]]:
    """Per task x protocol x fraction and pair (a, b): does a beat b beyond the seed spread?

    'better' when the mean paired margin a - b exceeds the larger of the two arms' seed sd and the paired
    t-test gives p < ALPHA, 'worse' when it is below minus that spread with p < ALPHA, else 'unclear'
    (within the seed spread, or too few seeds to tell it from noise)."""
    sd = {(r["task"], r["protocol"], r["fraction"], r["arm"]): r["sd"] or 0.0
          for r in report["summary"] if r["metric"] == metric}
    means = {(r["task"], r["protocol"], r["fraction"], r["arm"]): r["mean"]
             for r in report["summary"] if r["metric"] == metric}
    out = []
    for p in report["paired"]:
        if p["metric"] != metric or (p["a"], p["b"]) not in pairs:
            continue
        key = (p["task"], p["protocol"], p["fraction"])
        spread = max(sd.get(key + (p["a"],), 0.0), sd.get(key + (p["b"],), 0.0))
        margin = p["mean_diff"]
        significant = p["p"] is not None and p["p"] < ALPHA
        word = ("better" if margin > spread and significant else
                "worse" if margin < -spread and significant else "unclear")
        out.append({"task": key[0], "protocol": key[1], "fraction": key[2], "a": p["a"], "b": p["b"],
                    "metric": metric, "mean_a": means.get(key + (p["a"],)), "mean_b": means.get(key + (p["b"],)),
                    "margin": margin, "sd_margin": p["sd_diff"], "seed_spread": spread, "n": p["n"], "p": p["p"],
                    "verdict": word})
    return out


def build_report(config: dict[str, Any], runs: Sequence[dict[str, Any]], *, missing: Sequence[dict[str, Any]] = (),
                 pretrain: Sequence[dict[str, Any]] = (), machine: dict[str, Any] | None = None,
                 metrics: Sequence[str] = ("accuracy", "macro_f1", "piece_accuracy"), stopped: str = "",
                 baselines: dict[str, Any] | None = None) -> dict[str, Any]:
    """experiment.json: version, config, machine, counts (complete: every planned run finished; stopped:
    why the last invocation ended early, '' if it did not), the pre-training runs, the finished
    fine-tuning runs, the missing ones, summary and paired rows, the verdicts of the paired comparisons
    on the first metric, and per task the non-neural baselines on the same test split (`baselines`)."""
    report = {"version": VERSION, "config": config, "machine": machine or {},
              "planned_runs": len(runs) + len(missing), "finished_runs": len(runs), "complete": not missing,
              "stopped": stopped, "pretrain": list(pretrain), "runs": list(runs), "missing": list(missing),
              "baselines": dict(baselines or {}), **summarize(runs, metrics)}
    report["verdicts"] = verdicts(report, metrics[0] if metrics else "accuracy")
    return report


def write_report(report: dict[str, Any], workdir: str | os.PathLike) -> None:
    """experiment.json, experiment.md (the tables), experiment.png and experiment_time.png (time to accuracy)
    in `workdir` (local or gs://)."""
    root = paths.resolve(workdir)
    paths.write_json(root / paths.EXPERIMENT_FILE, report)
    (root / paths.EXPERIMENT_TABLE).write_text(format_markdown(report))
    write_plot(report, root / paths.EXPERIMENT_PLOT)
    write_time_plot(report, root / paths.EXPERIMENT_TIME_PLOT)


def load_report(workdir: str | os.PathLike) -> dict[str, Any]:
    """The experiment.json of an experiment folder."""
    path = paths.resolve(workdir) / paths.EXPERIMENT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `midibert-jax experiment --workdir {workdir}` first")
    return paths.read_json(path)


# ----------------------------------------------------------------------------- table and plot


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    sd = f" ± {row['sd']:.3f}" if row["sd"] is not None else ""
    return f"{row['mean']:.3f}{sd} (n={row['n']})"


def _layout(report: dict[str, Any]) -> tuple[list[str], list[str], dict[tuple, dict[str, Any]]]:
    """What both tables show: the configured metrics that have rows, the arms that ran (in ARMS order),
    and the summary rows by (task, protocol, fraction, metric, arm)."""
    metrics = [m for m in report["config"].get("metrics", ("accuracy",))
               if any(r["metric"] == m for r in report["summary"])]
    arms = [a for a in ARMS if any(r["arm"] == a for r in report["summary"])]
    cells = {(r["task"], r["protocol"], r["fraction"], r["metric"], r["arm"]): r for r in report["summary"]}
    return metrics, arms, cells


def _margin(verdict: dict[str, Any]) -> str:
    """A verdict's paired margin, '+0.150 ± 0.087' (no sd with one seed)."""
    sd = f" ± {verdict['sd_margin']:.3f}" if verdict["sd_margin"] is not None else ""
    return f"{verdict['margin']:+.3f}{sd}"


def format_table(report: dict[str, Any]) -> str:
    """Mean ± sd (n) per arm and metric, then the paired differences of the first metric with p, as text."""
    metrics, arms, cells = _layout(report)
    lines = []
    if not report["complete"]:
        lines.append(f"PARTIAL: {report['finished_runs']} of {report['planned_runs']} fine-tuning runs finished "
                     f"(missing: {len(report['missing'])}); the numbers below cover the finished ones")
    blocks = sorted({(r["task"], r["protocol"], r["fraction"]) for r in report["summary"]},
                    key=lambda k: _order(k + ("",), metrics))
    for task, protocol, fraction in blocks:
        lines.append(f"\n{task}, {protocol}, fraction {fraction:g} (test split)")
        lines.append(f"  {'arm':12s}" + "".join(f"{m:>26s}" for m in metrics))
        for arm in arms:
            if any((task, protocol, fraction, m, arm) in cells for m in metrics):
                lines.append(f"  {arm:12s}" + "".join(f"{_cell(cells.get((task, protocol, fraction, m, arm))):>26s}"
                                                       for m in metrics))
        for p in report["paired"]:
            if (p["task"], p["protocol"], p["fraction"], p["metric"]) == (task, protocol, fraction, metrics[0]):
                sd = f" ± {p['sd_diff']:.3f}" if p["sd_diff"] is not None else ""
                test = f", t={p['t']:.2f}, p={p['p']:.3g}" if p["p"] is not None else ", p n/a"
                lines.append(f"  {p['a']} - {p['b']}: {p['mean_diff']:+.3f}{sd} {metrics[0]} (n={p['n']} paired seeds{test})")
        if (task, protocol, fraction) == next(b for b in blocks if b[0] == task):
            lines.extend(f"  {line}" for line in baseline_lines(report.get("baselines", {}).get(task)))
    verdict_rows = report.get("verdicts", [])
    if verdict_rows:
        lines.append(f"\nverdicts (test {metrics[0]}: 'better' only when the paired margin exceeds the larger seed sd "
                     f"and p < {ALPHA:g}):")
        for v in verdict_rows:
            p = f"p={v['p']:.2g}" if v["p"] is not None else "p n/a"
            said = "unclear" if v["verdict"] == "unclear" else f"{v['a']} {v['verdict']} than {v['b']}"
            lines.append(f"  {v['task']} {v['protocol']} {v['fraction']:g}: {v['a']} - {v['b']} {_margin(v)} "
                         f"(seed spread {v['seed_spread']:.3f}, n={v['n']}, {p}) -> {said}")
    return "\n".join(lines).lstrip("\n")


def baseline_lines(result: dict[str, Any] | None) -> list[str]:
    """The baselines of one task (`baselines.evaluate_baselines`) and the published numbers, as text lines."""
    if not result:
        return []
    parts = []
    for name, b in result.get("baselines", {}).items():
        extra = f" (binary {b['binary_accuracy']:.3f})" if "binary_accuracy" in b else ""
        extra += f" (piece {b['piece_accuracy']:.3f})" if "piece_accuracy" in b else ""
        parts.append(f"{name} {b['accuracy']:.3f}{extra}")
    lines = ["baselines on the same test split: " + ", ".join(parts)] if parts else []
    published = result.get("published", {})
    if published:
        lines.append("published (other tokens and windows, cited): " +
                     ", ".join(f"{name} {value:.2f}%" for name, value in published.items()))
    return lines


def format_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown, ready for a paper's notes or a results page: per metric one table of mean ± sd
    (n seeds) per arm with the task's baselines beside it, then the paired comparisons and their verdicts."""
    metrics, arms, cells = _layout(report)
    out = []
    if not report["complete"]:
        out.append(f"**Partial**: {report['finished_runs']} of {report['planned_runs']} fine-tuning runs finished; "
                   "the numbers cover the finished ones.\n")
    for metric in metrics:
        blocks = sorted({(r["task"], r["protocol"], r["fraction"]) for r in report["summary"] if r["metric"] == metric},
                        key=lambda k: _order(k + (metric,), metrics))
        out.append(f"Test {metric.replace('_', ' ')}, mean ± sd over seeds (n)\n")
        out.append("| task | protocol | fraction | " + " | ".join(arms) + " | baselines (same test split) |")
        out.append("|---|---|---|" + "---|" * len(arms) + "---|")
        for task, protocol, fraction in blocks:
            baseline = report.get("baselines", {}).get(task, {}).get("baselines", {})
            ref = ", ".join(f"{name} {b[metric]:.3f}" for name, b in baseline.items() if b.get(metric) is not None)
            row = [_cell(cells.get((task, protocol, fraction, metric, arm))) for arm in arms]
            out.append(f"| {task} | {protocol} | {fraction:g} | " + " | ".join(row) + f" | {ref or '–'} |")
        out.append("")
    published = {task: b.get("published") for task, b in report.get("baselines", {}).items() if b.get("published")}
    if published:
        out.append("Published (other tokens and windows, cited, not recomputed): " + "; ".join(
            f"{task}: " + ", ".join(f"{name} {value:.2f} %" for name, value in pub.items())
            for task, pub in sorted(published.items())) + "\n")
    verdict_rows = report.get("verdicts", [])
    if verdict_rows:
        metric = verdict_rows[0]["metric"]
        out.append(f"Paired differences of test {metric.replace('_', ' ')} (a - b over the seeds both finished; "
                   f"'better' or 'worse' only when the margin exceeds the larger seed sd and p < {ALPHA:g})\n")
        out.append("| task | protocol | fraction | a - b | mean ± sd | seed spread | n | p | verdict |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for v in verdict_rows:
            p = f"{v['p']:.2g}" if v["p"] is not None else "n/a"
            said = "unclear" if v["verdict"] == "unclear" else f"{v['a']} {v['verdict']}"
            out.append(f"| {v['task']} | {v['protocol']} | {v['fraction']:g} | {v['a']} - {v['b']} | "
                       f"{_margin(v)} | {v['seed_spread']:.3f} | {v['n']} | {p} | {said} |")
    return "\n".join(out).rstrip("\n") + "\n"


def print_table(report: dict[str, Any]) -> None:
    print("[experiment] results\n" + format_table(report))


ARM_COLORS = {"adversarial": "tab:red", "random": "tab:blue", "none": "tab:gray"}


def figure_size(report: dict[str, Any]) -> tuple[float, float]:
    """(width, height) in inches for `draw`: one 4.5 x 3.4 panel per task x protocol."""
    tasks = sorted({r["task"] for r in report["summary"]}) or ["-"]
    protocols = sorted({r["protocol"] for r in report["summary"]}) or ["-"]
    return 4.5 * len(protocols), 3.4 * len(tasks)


def draw(fig, report: dict[str, Any], metric: str = "accuracy") -> None:
    """Onto a matplotlib Figure: one panel per task x protocol, test `metric` against the label fraction
    (log x), one line per arm, error bars one sd over the seeds."""
    rows = [r for r in report["summary"] if r["metric"] == metric]
    tasks = sorted({r["task"] for r in rows})
    protocols = [p for p in PROTOCOLS if any(r["protocol"] == p for r in rows)]
    if not rows:
        ax = fig.subplots()
        ax.text(0.5, 0.5, f"no finished runs with test {metric}", ha="center", va="center")
        ax.set_axis_off()
        return
    axes = np.atleast_2d(fig.subplots(len(tasks), len(protocols), squeeze=False))
    for i, task in enumerate(tasks):
        for j, protocol in enumerate(protocols):
            ax = axes[i, j]
            for arm in ARMS:
                points = sorted((r["fraction"], r["mean"], r["sd"] or 0.0) for r in rows
                                if (r["task"], r["protocol"], r["arm"]) == (task, protocol, arm))
                if points:
                    x, y, e = zip(*points)
                    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=arm, color=ARM_COLORS[arm])
            ax.set_xscale("log")
            fractions = sorted({r["fraction"] for r in rows})
            ax.set_xticks(fractions)
            ax.set_xticklabels([f"{f:g}" for f in fractions])
            ax.minorticks_off()
            ax.set_title(f"{task} · {protocol}")
            ax.set_xlabel("fraction of training pieces")
            ax.set_ylabel(f"test {metric}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("" if report["complete"] else
                 f"partial: {report['finished_runs']} of {report['planned_runs']} runs finished", fontsize=9)


def draw_time_to_accuracy(fig, report: dict[str, Any]) -> None:
    """Onto a matplotlib Figure: one panel per task x protocol x fraction, each run's validation accuracy against
    its wall-clock minutes (its `curve`), coloured by arm; the machine's CPU and ISA flags in the title."""
    runs = [r for r in report["runs"] if r.get("curve", {}).get("seconds")]
    panels = sorted({(r["task"], r["protocol"], r["fraction"]) for r in runs}, key=lambda k: _order(k + ("",), ()))
    if not panels:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no finished runs with a time-to-accuracy curve", ha="center", va="center")
        ax.set_axis_off()
        return
    axes = np.ravel(fig.subplots(1, len(panels), squeeze=False))
    for ax, (task, protocol, fraction) in zip(axes, panels):
        labelled = set()
        for r in runs:
            if (r["task"], r["protocol"], r["fraction"]) == (task, protocol, fraction):
                ax.plot(np.asarray(r["curve"]["seconds"]) / 60, r["curve"]["validation_accuracy"], marker="o",
                        markersize=2, color=ARM_COLORS.get(r["arm"], "black"), alpha=0.8,
                        label=None if r["arm"] in labelled else r["arm"])
                labelled.add(r["arm"])
        ax.set_title(f"{task} · {protocol} · {fraction:g}", fontsize=9)
        ax.set_xlabel("wall-clock minutes of the run")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    machine = report.get("machine", {})
    fig.suptitle(f"{machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs; ISA {' '.join(machine.get('isa', []))}",
                 fontsize=8)


def _png(draw_fn, report: dict[str, Any], size: tuple[float, float], path: str | os.PathLike, *args) -> None:
    """`draw_fn(fig, report, *args)` into a PNG (local or cloud path), without pyplot (no global backend)."""
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    fig = Figure(figsize=size)
    draw_fn(fig, report, *args)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    epath.Path(path).write_bytes(buffer.getvalue())


def write_plot(report: dict[str, Any], path: str | os.PathLike, metric: str = "accuracy") -> None:
    """`draw` into a PNG."""
    _png(draw, report, figure_size(report), path, metric)


def write_time_plot(report: dict[str, Any], path: str | os.PathLike) -> None:
    """`draw_time_to_accuracy` into a PNG, one 4 x 3.2 inch panel per task x protocol x fraction."""
    panels = len({(r["task"], r["protocol"], r["fraction"]) for r in report["runs"]}) or 1
    _png(draw_time_to_accuracy, report, (4.0 * panels, 3.4), path)

