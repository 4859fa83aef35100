"""The goodput report: one dict built from runs and events, laid out as a terminal
table, JSON, CSV (one row per job) or one self-contained HTML file with plots."""

from __future__ import annotations

import csv
import html
import io
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from slurmkit import output
from slurmkit.goodput import fast, metrics, nodes
from slurmkit.goodput.events import JobEvents
from slurmkit.goodput.ingest import IngestStats, Run
from slurmkit.goodput.table import RunTable, drop_superseded, from_runs

#: Kokolis et al. (HPCA 2025): the higher of the two rates they report.
DEFAULT_FAILURES_PER_NODE_DAY = 6.5 / 1000


def build_report(runs: Iterable[Run] | RunTable, *,
                 events: Mapping[int, JobEvents] | None = None,
                 stats: IngestStats | None = None, now: int | None = None,
                 classes: Iterable[str] = (), capacity_gpus: int | None = None,
                 node_events: Mapping[str, list[int]] | None = None,
                 cluster_nodes: int | None = None, long_job_hours: float = 1.0,
                 include_jobs: bool = True, job_filter: Iterable[int] = ()) -> dict[str, Any]:
    """Everything the formats show. Vectorized over all jobs (``fast``); jobs with
    checkpoint events are refined one by one (``metrics.chain_metrics``)."""
    now = int(now if now is not None else time.time())
    events = events or {}
    classes = tuple(classes)
    table = runs if isinstance(runs, RunTable) else from_runs(runs)
    table, superseded = drop_superseded(table)
    if stats is not None:
        stats.superseded += superseded
    wanted = set(job_filter)
    if wanted:
        keep = [i for i in range(len(table)) if int(table.job_id[i]) in wanted]
        table = from_runs(table.run(i) for i in keep)
    chains = fast.compute_chains(table, now=now, classes=classes)
    detailed: dict[int, metrics.ChainMetrics] = {}
    spurious: set[int] = set()
    lost_override: dict[int, float] = {}
    job_ids = table.job_id[chains.first] if len(table) else np.zeros(0, dtype=np.int64)
    for chain_index in np.flatnonzero(np.isin(job_ids, list(events))) if events else ():
        chain_index = int(chain_index)
        first, last = int(chains.first[chain_index]), int(chains.last[chain_index])
        chain = metrics.chain_metrics([table.run(i) for i in range(first, last + 1)],
                                      events[int(job_ids[chain_index])], now=now, classes=classes)
        detailed[chain_index] = chain
        fast.override(chains, chain_index, chain)
        for offset, breakdown in enumerate(chain.runs):
            if breakdown.spurious_preemption:
                spurious.add(first + offset)
            if breakdown.state == "PREEMPTED":
                lost_override[first + offset] = breakdown.lost_s

    def detail(chain_index: int) -> metrics.ChainMetrics:
        if chain_index not in detailed:
            first, last = int(chains.first[chain_index]), int(chains.last[chain_index])
            detailed[chain_index] = metrics.chain_metrics(
                [table.run(i) for i in range(first, last + 1)], None, now=now, classes=classes)
        return detailed[chain_index]

    starts = chains.eligible[chains.eligible > 0]
    ends = chains.end[chains.end > 0]
    window = {"start_epoch_s": int(starts.min()) if starts.size else None,
              "end_epoch_s": int(ends.max()) if ends.size else None}
    node_table = fast.node_failure_table(table, node_events)
    failures = sum(row["blamed_failures"] or 0 for row in node_table) if node_events else \
        int(chains.node_failures.sum())
    if cluster_nodes is None and len(table) < 200_000:
        cluster_nodes = len({name for expression in set(table.node_list)
                             for name in nodes.names(expression)})
    observed_days = ((window["end_epoch_s"] or now) - (window["start_epoch_s"] or now)) / 86400
    node_days = (cluster_nodes or 0) * observed_days
    if failures >= 3 and node_days > 0:
        rate, rate_source = failures / node_days, "measured"
    else:
        rate, rate_source = DEFAULT_FAILURES_PER_NODE_DAY, "assumed (Kokolis et al., HPCA 2025)"
    waits = chains.buckets[:, metrics.BUCKETS.index("queue_after_requeue")]
    restarts = (chains.last - chains.first)
    restart_s = float(np.median(waits[restarts > 0] / restarts[restarts > 0])) \
        if (restarts > 0).any() else 0.0
    overheads = [b.restart_overhead_s for c in detailed.values() for b in c.runs[1:]
                 if c.evidence == "events"]
    if overheads:
        restart_s += float(np.median(overheads))
    expected = []
    for _, chain in sorted(detailed.items()):
        if chain.evidence != "events" or chain.wallclock_s < long_job_hours * 3600:
            continue
        interval_s, write_s = metrics.checkpoint_interval(events.get(chain.job_id))
        expected.append(metrics.expected_ettr(chain, failures_per_node_day=rate,
                                              restart_s=restart_s, interval_s=interval_s,
                                              write_s=write_s))
    everything = np.zeros(len(chains), dtype=np.int64)
    report: dict[str, Any] = {
        "generated_epoch_s": now, "window": window,
        "ingest": (stats or IngestStats()).to_dict(),
        "totals": fast.totals(chains, everything, ["all"]).get("all", metrics.Totals().to_dict()),
        "queues": dict(sorted(fast.totals(chains, chains.account, table.accounts).items())),
        "classes": dict(sorted(fast.totals(chains, chains.job_class, chains.classes).items())),
        "node_failures": node_table,
        "preemptions": fast.preemption_attribution(table, chains, spurious, lost_override),
        "failure_rate": {"failures_per_node_day": round(rate, 6), "source": rate_source,
                         "restart_overhead_s": round(restart_s, 1)},
        "expected_ettr": expected,
    }
    if capacity_gpus and window["start_epoch_s"] and window["end_epoch_s"]:
        report["utilisation"] = fast.utilisation(table, chains, capacity_gpus,
                                                 window["start_epoch_s"], window["end_epoch_s"])
    if include_jobs:
        report["jobs"] = [detail(index).to_dict() for index in range(len(chains))]
    else:
        badput = (chains.wallclock - chains.productive) * np.maximum(chains.gpus, 1)
        top = np.argsort(-badput, kind="stable")[:20]
        report["worst_jobs"] = [detail(int(index)).to_dict() for index in top]
    return report


# ----------------------------------------------------------------- table


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(report: dict) -> str:
    totals = report["totals"]
    lines = [
        f"goodput {_window_text(report)}: {totals['jobs']} jobs, {totals['runs']} runs, "
        f"{totals['node_failures']} node failures, {totals['preemptions']} preemptions",
        f"ETTR {_pct(totals['ettr'])} (GPU-weighted {_pct(totals['gpu_weighted_ettr'])}); "
        f"{totals['gpu_hours']:.1f} GPU-hours, {totals['productive_gpu_hours']:.1f} productive",
        "",
        "where the rest went (GPU-hours):",
        output.table(["BUCKET", "GPU_HOURS", "HOURS"],
                     [(name, f"{totals['badput_gpu_hours'][name]:.2f}",
                       f"{totals['badput_h'][name]:.2f}") for name in metrics.BUCKETS]),
        "",
    ]
    for title, key in (("per queue", "queues"), ("per workload class", "classes")):
        rows = [(name, value["jobs"], value["runs"], _pct(value["ettr"]),
                 f"{value['gpu_hours']:.1f}", f"{value['productive_gpu_hours']:.1f}",
                 value["node_failures"], value["preemptions"])
                for name, value in report[key].items()]
        lines += [f"{title}:", output.table(
            ["NAME", "JOBS", "RUNS", "ETTR", "GPU_H", "PRODUCTIVE_GPU_H", "NODE_FAIL",
             "PREEMPTED"], rows), ""]
    jobs = report.get("jobs") or report.get("worst_jobs") or []
    worst = sorted(jobs, key=lambda j: -(j["wallclock_s"] - j["productive_s"]) * max(j["gpus"], 1))
    lines += ["jobs with the most badput:", output.table(
        ["JOBID", "NAME", "ACCOUNT", "CLASS", "RUNS", "FINAL", "ETTR", "LOST_STEPS",
         "NODE_FAIL", "PREEMPTED"],
        [(j["display_id"], j["name"][:30], j["account"], j["class"], j["runs"], j["final_state"],
          _pct(j["ettr"]), j["lost_steps"], j["node_failures"], j["preemptions"])
         for j in worst[:15]]), ""]
    if report["node_failures"]:
        lines += ["nodes in NODE_FAIL runs:", output.table(
            ["NODE", "NODE_FAIL_RUNS", "BLAMED"],
            [(r["node"], r["node_fail_runs"], r["blamed_failures"])
             for r in report["node_failures"][:10]]), ""]
    if report["preemptions"]:
        lines += ["preemption cost (who preempted whom):", output.table(
            ["PREEMPTOR", "CLASS", "VICTIM", "CLASS", "COUNT", "GPU_H_LOST"],
            [(r["preemptor_queue"], r["preemptor_class"], r["victim_queue"], r["victim_class"],
              r["preemptions"], r["gpu_hours_lost"]) for r in report["preemptions"]]), ""]
    ingest = report["ingest"]
    odd = {k: v for k, v in ingest.items() if k in ("malformed_rows", "unparsable_times",
                                                    "steps_skipped", "superseded_records")
           and v}
    if ingest["unknown_states"] or odd or ingest["truncated_input"]:
        lines.append("input notes: " + ", ".join(
            [f"{v} {k.replace('_', ' ')}" for k, v in odd.items()]
            + [f"{count} runs in unknown state {state}"
               for state, count in ingest["unknown_states"].items()]
            + (["the input ended in the middle of a row"] if ingest["truncated_input"] else [])))
    return "\n".join(lines).rstrip() + "\n"


def _window_text(report: dict) -> str:
    window = report["window"]
    if not window["start_epoch_s"]:
        return "(no jobs)"
    fmt = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))  # noqa: E731
    return f"{fmt(window['start_epoch_s'])} .. {fmt(window['end_epoch_s'])}"


# ----------------------------------------------------------------- JSON, CSV


def format_json(report: dict) -> str:
    return json.dumps(report, indent=1, ensure_ascii=False)


CSV_FIELDS = ("job_id", "display_id", "name", "user", "account", "partition", "qos", "class",
              "runs", "final_state", "node_failures", "preemptions", "ettr", "wallclock_s",
              "productive_s", *[f"badput_{name}_s" for name in metrics.BUCKETS], "lost_steps",
              "gpus", "nodes", "gpu_hours", "evidence")


def format_csv(report: dict) -> str:
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for job in report.get("jobs") or report.get("worst_jobs") or []:
        row = dict(job)
        for name in metrics.BUCKETS:
            row[f"badput_{name}_s"] = job["badput_s"][name]
        writer.writerow([_csv_safe(row.get(name)) for name in CSV_FIELDS])
    return stream.getvalue()


def _csv_safe(value):
    # A job name starting with = + - @ would be a formula in a spreadsheet.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return "" if value is None else value


# ----------------------------------------------------------------- HTML


def format_html(report: dict, *, timeline_jobs: Iterable[int] = ()) -> str:
    from slurmkit.goodput import plots

    figures = plots.render_all(report, timeline_jobs=tuple(timeline_jobs))
    totals = report["totals"]
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>slurmkit goodput</title><style>",
        "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}",
        "h1{font-size:22px}h2{font-size:17px;margin-top:28px}",
        "table{border-collapse:collapse;font-size:13px;margin:8px 0}",
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f1f1f1}",
        ".figure{margin:12px 0}.kpi{font-size:28px;font-weight:600}",
        "</style></head><body>",
        f"<h1>slurmkit goodput — {esc(_window_text(report))}</h1>",
        f"<p><span class='kpi'>{_pct(totals['ettr'])}</span> ETTR "
        f"(GPU-weighted {_pct(totals['gpu_weighted_ettr'])}) over {totals['jobs']} jobs, "
        f"{totals['runs']} runs, {totals['gpu_hours']:.1f} GPU-hours "
        f"({totals['productive_gpu_hours']:.1f} productive); {totals['node_failures']} node "
        f"failures, {totals['preemptions']} preemptions.</p>",
    ]
    for key, title in (("timeline", "Runs of the jobs that were interrupted most"),
                       ("ettr_by_queue", "ETTR by queue"),
                       ("badput", "Where the GPU-hours went"),
                       ("utilisation", "GPU use by workload class")):
        if figures.get(key):
            parts += [f"<h2>{esc(title)}</h2>",
                      f"<div class='figure' id='plot-{key}'>{figures[key]}</div>"]
    parts.append("<h2>Queues</h2>" + _html_table(
        ["queue", "jobs", "runs", "ETTR", "GPU-hours", "productive", "node failures",
         "preemptions"],
        [(name, v["jobs"], v["runs"], _pct(v["ettr"]), f"{v['gpu_hours']:.1f}",
          f"{v['productive_gpu_hours']:.1f}", v["node_failures"], v["preemptions"])
         for name, v in report["queues"].items()]))
    jobs = report.get("jobs") or report.get("worst_jobs") or []
    parts.append("<h2>Jobs</h2>" + _html_table(
        ["job", "name", "user", "queue", "class", "runs", "final", "ETTR", "lost steps",
         "node failures", "preemptions"],
        [(j["display_id"], j["name"], j["user"], j["account"], j["class"], j["runs"],
          j["final_state"], _pct(j["ettr"]), j["lost_steps"], j["node_failures"],
          j["preemptions"]) for j in jobs[:500]]))
    if report["node_failures"]:
        parts.append("<h2>Nodes in failed runs</h2>" + _html_table(
            ["node", "NODE_FAIL runs", "blamed"],
            [(r["node"], r["node_fail_runs"], r["blamed_failures"]) for r in report["node_failures"]]))
    if report["preemptions"]:
        parts.append("<h2>Preemption cost</h2>" + _html_table(
            ["preemptor", "class", "victim", "class", "count", "GPU-hours lost"],
            [(r["preemptor_queue"], r["preemptor_class"], r["victim_queue"], r["victim_class"],
              r["preemptions"], r["gpu_hours_lost"]) for r in report["preemptions"]]))
    if report["expected_ettr"]:
        parts.append("<h2>Measured vs expected ETTR (long jobs)</h2>" + _html_table(
            ["job", "nodes", "measured", "expected", "interval s", "optimal interval s",
             "MTTF h"],
            [(r["job_id"], r["nodes"], _pct(r.get("measured_ettr")),
              _pct(r.get("expected_ettr")), r.get("checkpoint_interval_s"),
              r.get("optimal_interval_s"), r.get("mttf_h")) for r in report["expected_ettr"]]))
    ingest = report["ingest"]
    parts.append(f"<p style='color:#666;font-size:12px'>Input: {ingest['rows']} rows, "
                 f"{ingest['runs']} runs, {ingest['malformed_rows']} malformed, "
                 f"{ingest.get('superseded_records', 0)} superseded, unknown states "
                 f"{esc(json.dumps(ingest['unknown_states']))}, truncated: "
                 f"{ingest['truncated_input']}.</p></body></html>")
    return "\n".join(parts)


def _html_table(headers, rows) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc('-' if c is None else str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
