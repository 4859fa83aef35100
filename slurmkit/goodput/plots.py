"""The report's plots, drawn with matplotlib as inline SVG (text as paths: nothing
from a job name reaches the page as markup; '$' is escaped so a name is never
mathtext)."""

from __future__ import annotations

import io
import sys

from slurmkit.errors import SlurmkitError
from slurmkit.goodput.engine import BUCKETS

STATE_COLORS = {"COMPLETED": "#2e7d32", "RUNNING": "#1565c0", "NODE_FAIL": "#c62828",
                "PREEMPTED": "#ef6c00", "REQUEUED": "#8e24aa", "FAILED": "#6d4c41",
                "CANCELLED": "#757575", "TIMEOUT": "#ad1457"}
BUCKET_COLORS = {"initial_queue": "#b0bec5", "queue_after_requeue": "#78909c",
                 "restart_overhead": "#ffb74d", "failure_detection": "#7e57c2",
                 "lost_work": "#e53935",
                 "checkpoint_stall": "#8d6e63", "preemption": "#fb8c00", "other": "#9e9e9e"}


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise SlurmkitError(
            "the HTML report draws its plots with matplotlib, which is not installed for "
            f"{sys.executable}: install it (`pip install 'slurmkit[report]'`, or Debian's "
            "python3-matplotlib), or choose --format table, json or csv") from error

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "path"
    matplotlib.rcParams["svg.hashsalt"] = "slurmkit"  # stable ids between runs
    import matplotlib.pyplot as plt

    return plt


def _label(text: str) -> str:
    return str(text).replace("$", r"\$").replace("\n", " ")[:40]


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    _pyplot().close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def render_all(report: dict, chosen: list[dict]) -> dict[str, str]:
    """Every figure of the summary ``report``, with ``chosen`` jobs on the timeline."""
    figures = {}
    if chosen:
        figures["timeline"] = timeline(chosen)
    if report["queues"]:
        figures["ettr_by_queue"] = ettr_by_queue(report["queues"])
        figures["badput"] = badput(report["queues"])
    if report.get("utilisation"):
        figures["utilisation"] = utilisation(report["utilisation"])
    return figures


def timeline(jobs: list[dict]) -> str:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(11, 0.55 * len(jobs) + 1.4))
    for row, job in enumerate(jobs):
        origin = job["eligible_epoch_s"] or min(
            (run["start_epoch_s"] for run in job["run_details"] if run["start_epoch_s"]), default=0)
        for run in job["run_details"]:
            if run["start_epoch_s"] is None:
                continue
            start = run["start_epoch_s"] - origin
            end = (run["end_epoch_s"] or job["end_epoch_s"] or run["start_epoch_s"]) - origin
            queued = start - run["queue_s"]
            axes.barh(row, run["queue_s"], left=queued, height=0.35, color="#cfd8dc")
            axes.barh(row, max(end - start, 0.5), left=start, height=0.6,
                      color=STATE_COLORS.get(run["state"], "#455a64"))
            if run["lost_s"]:
                axes.barh(row, run["lost_s"], left=end - run["lost_s"], height=0.6,
                          color="none", edgecolor="black", hatch="///", linewidth=0.5)
    axes.set_yticks(range(len(jobs)),
                    [_label(f"{job['job_id']} {job['name']}") for job in jobs])
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the job became eligible (hatched: lost work)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in STATE_COLORS.values()]
    axes.legend(handles, list(STATE_COLORS), ncol=4, fontsize=8, loc="lower right")
    return _svg(figure)


def ettr_by_queue(queues: dict) -> str:
    plt = _pyplot()
    names = list(queues)
    values = [100 * (queues[name]["ettr"] or 0) for name in names]
    figure, axes = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    axes.barh(range(len(names)), values, color="#1e88e5")
    axes.set_yticks(range(len(names)), [_label(name) for name in names])
    axes.set_xlim(0, 100)
    axes.set_xlabel("ETTR (%)")
    for index, value in enumerate(values):
        axes.text(min(value + 1, 92), index, f"{value:.1f}%", va="center", fontsize=8)
    axes.invert_yaxis()
    return _svg(figure)


def badput(queues: dict) -> str:
    plt = _pyplot()
    names = list(queues)
    figure, axes = plt.subplots(figsize=(9, 0.45 * len(names) + 1.6))
    productive = [queues[name]["productive_gpu_hours"] for name in names]
    axes.barh(range(len(names)), productive, color="#43a047", label="productive")
    left = productive[:]
    for bucket in BUCKETS:
        values = [queues[name]["badput_gpu_hours"][bucket] for name in names]
        if any(values):
            axes.barh(range(len(names)), values, left=left, label=bucket.replace("_", " "),
                      color=BUCKET_COLORS[bucket])
            left = [a + b for a, b in zip(left, values, strict=True)]
    axes.set_yticks(range(len(names)), [_label(name) for name in names])
    axes.set_xlabel("GPU-hours")
    axes.legend(fontsize=8, ncol=3, loc="lower right")
    axes.invert_yaxis()
    return _svg(figure)


def utilisation(data: dict) -> str:
    plt = _pyplot()
    bins = len(data["idle"])
    hours = [position * data["bin_s"] / 3600 for position in range(bins)]
    names = sorted(data["classes"])
    series = [[100 * value for value in data["classes"][name]] for name in names]
    figure, axes = plt.subplots(figsize=(10, 3.2))
    axes.stackplot(hours, *series, [100 * value for value in data["idle"]],
                   labels=[_label(name) for name in names] + ["idle"],
                   colors=[f"C{index}" for index in range(len(names))] + ["#eceff1"])
    axes.set_ylim(0, 100)
    axes.set_ylabel(f"% of {data['capacity_gpus']} GPUs")
    axes.set_xlabel("hours since the start of the window")
    axes.legend(fontsize=8, loc="upper right", ncol=len(names) + 1)
    return _svg(figure)
