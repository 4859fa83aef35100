"""Goodput: the loader (fast path and fallback), the engine (exact ETTR and buckets on
hand-computed chains, against a list-based oracle), real-format dumps, every output
format, and bad input."""

import csv
import io
import json
import os
import random

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from slurmkit.cli import cli
from slurmkit.goodput import engine, load, report
from slurmkit.goodput.events import add_event, load_events
from tests.unit import goodput_oracle

COLUMNS = load.COLUMNS
T0 = 1_800_000_000


def row(job_id, restarts, state, submit, eligible, start, end, nodes="c[1-4]", nnodes=4,
        gpus=32, name="train", account="team-a", qos="training", partition="borrow-training",
        display=None, exit_code="0:0"):
    values = {"JobIDRaw": str(job_id), "JobID": display or str(job_id), "User": "bob",
              "Account": account, "Partition": partition, "QOS": qos, "State": state,
              "Restarts": str(restarts), "Submit": str(submit), "Eligible": str(eligible),
              "Start": str(start or "Unknown"), "End": str(end or "Unknown"), "NNodes": str(nnodes),
              "NodeList": nodes, "AllocTRES": f"billing={gpus},cpu=8,gres/gpu={gpus},node={nnodes}",
              "ExitCode": exit_code, "JobName": name}
    return "|".join(values[column] for column in COLUMNS)


def runs_of(lines, columns=COLUMNS):
    stats = load.IngestStats()
    runs, stats.truncated = load.parse_block("\n".join(lines).encode() + b"\n", columns, stats)
    return runs, stats


def built(lines, events=None, now=T0 + 2000, **options):
    runs, stats = runs_of(lines)
    return report.build(runs, events=events, stats=stats, now=now, **options)


def job(result, job_id):
    [found] = [j for j in report.jobs(result) if j["job_id"] == str(job_id)]
    return found


# A training job: run 0 crashes (NODE_FAIL), run 1 is preempted by job 300, run 2 completes.
CHAIN = [
    row(100, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 310),
    row(100, 1, "PREEMPTED", T0 + 310, T0 + 341, T0 + 345, T0 + 645, nodes="c[1-3]", nnodes=3,
        gpus=24),
    row(100, 2, "COMPLETED", T0 + 645, T0 + 676, T0 + 700, T0 + 1000, nodes="c[1-3]", nnodes=3,
        gpus=24),
]
PREEMPTOR = row(300, 0, "COMPLETED", T0 + 600, T0 + 600, T0 + 646, T0 + 700, nodes="c1",
                nnodes=1, gpus=8, qos="inference", partition="guar-team-a", name="serve")


def chain_events():
    """What the trainer's rank 0 wrote: 1 step every 10 s of work."""
    jobs = {}
    events = []
    for step in range(1, 30):  # run 0: steps 1..29 at T0+20.., crash at T0+310
        events.append({"event": "step", "job_id": "100", "run": 0, "step": step,
                       "time_epoch_s": T0 + 10 + 10 * step})
    events.append({"event": "checkpoint", "kind": "triggered", "job_id": "100", "run": 0,
                   "step": 29, "rank": 3, "committed": True, "time_epoch_s": T0 + 301})
    events.append({"event": "restore", "job_id": "100", "run": 1, "rank": 0, "step": 29,
                   "time_epoch_s": T0 + 347})
    for step in range(30, 58):  # run 1 starts stepping at T0+355, preempted at T0+645
        events.append({"event": "step", "job_id": "100", "run": 1, "step": step,
                       "time_epoch_s": T0 + 355 + 10 * (step - 30)})
    events.append({"event": "checkpoint", "kind": "periodic", "job_id": "100", "run": 1,
                   "step": 40, "rank": 0, "stall_s": 0.5, "write_s": 3.0, "committed": True,
                   "time_epoch_s": T0 + 460})
    events.append({"event": "restore", "job_id": "100", "run": 2, "rank": 0, "step": 55,
                   "time_epoch_s": T0 + 702})
    for step in range(56, 85):
        events.append({"event": "step", "job_id": "100", "run": 2, "step": step,
                       "time_epoch_s": T0 + 710 + 10 * (step - 56)})
    events.append({"event": "checkpoint", "kind": "final", "job_id": "100", "run": 2,
                   "step": 84, "rank": 0, "stall_s": 0.2, "committed": True,
                   "time_epoch_s": T0 + 990})
    for event in events:
        add_event(jobs, event)
    for job_events in jobs.values():
        for run in job_events.runs.values():
            run.steps.sort()
    return jobs


def test_chain_with_events_splits_the_badput_exactly():
    summary, result = built(CHAIN + [PREEMPTOR], chain_events())
    chain = job(result, 100)
    buckets = chain["badput_s"]
    assert chain["wallclock_s"] == 1000 and chain["runs"] == 3
    assert buckets["initial_queue"] == 10
    assert buckets["queue_after_requeue"] == 35  # T0+310 -> T0+345, after the crash
    # The crash: step 29 (kept) done at T0+300, Slurm ended the run at T0+310. Nothing
    # was done twice; the 10 s are detection, not lost work.
    assert buckets["failure_detection"] == 10 and buckets["lost_work"] == 0
    # The wait after the preemption, and step 55 (kept, T0+605) -> the preemption.
    assert buckets["preemption"] == 55 + 40
    assert buckets["restart_overhead"] == 10 + 10  # run 1: 345 -> 355; run 2: 700 -> 710
    assert buckets["checkpoint_stall"] == pytest.approx(0.7)
    # ETTR by hand: 1000 - (10 + 35 + 10 + 95 + 20 + 0.7) = 829.3 productive seconds.
    assert chain["productive_s"] == 829.3 and chain["ettr"] == 0.8293
    assert [r["lost_steps"] for r in chain["run_details"]] == [0, 2, 0]
    assert chain["lost_steps"] == 2 and chain["node_failures"] == 1
    assert chain["preemptions"] == 1 and chain["evidence"] == "events"
    assert chain["run_details"][1]["preempted_by"] == "300"


def test_cluster_and_gpu_weighted_ettr_by_hand():
    """Two jobs, 8 and 32 GPUs: the plain mean weighs jobs by time, the GPU-weighted
    one by GPU-seconds."""
    lines = [row(1, 0, "COMPLETED", T0, T0, T0 + 100, T0 + 1000, gpus=8, nodes="c1", nnodes=1),
             row(2, 0, "NODE_FAIL", T0, T0, T0 + 0, T0 + 500, gpus=32, nodes="c[2-5]"),
             row(2, 1, "COMPLETED", T0 + 500, T0 + 500, T0 + 600, T0 + 1000, gpus=32,
                 nodes="c[2-5]")]
    summary, result = built(lines)
    # Job 1: 900/1000. Job 2: 1000 wallclock, 500 lost, 100 queued: 400/1000.
    assert job(result, 1)["ettr"] == 0.9 and job(result, 2)["ettr"] == 0.4
    totals = summary["totals"]
    assert totals["ettr"] == (900 + 400) / 2000
    assert totals["gpu_weighted_ettr"] == round((8 * 900 + 32 * 400) / (8 * 1000 + 32 * 1000), 4)
    assert totals["badput_h"]["lost_work"] == round(500 / 3600, 3)
    assert totals["requeues"] == 1 and totals["node_failures"] == 1


def test_without_events_interrupted_runs_count_as_lost():
    summary, result = built(CHAIN + [PREEMPTOR])
    buckets = job(result, 100)["badput_s"]
    assert buckets["lost_work"] == 300 and buckets["preemption"] == 300 + 55
    assert buckets["failure_detection"] == 0
    assert job(result, 100)["evidence"] == "sacct" and job(result, 100)["lost_steps"] is None


def test_a_preempted_run_without_a_preemptor_is_a_spurious_requeue():
    # No job started on c[1-3] near T0+645: the PREEMPTED record is Slurm's stale flag.
    lines = CHAIN[:2] + [row(100, 2, "COMPLETED", T0 + 645, T0 + 676, T0 + 700, T0 + 701,
                             nodes="c[1-3]", nnodes=3, gpus=24)]
    summary, result = built(lines)
    chain = job(result, 100)
    assert chain["preemptions"] == 0 and chain["spurious_requeues"] == 1
    assert chain["badput_s"]["other"] == 55 + 1 and chain["badput_s"]["preemption"] == 0
    assert summary["totals"]["spurious_requeues"] == 1
    assert "1 spurious requeues" in report.format_table(summary, result)


def test_a_selected_job_finds_its_preemptor_among_the_other_jobs(tmp_path):
    """``--job 100``: the report is about job 100 alone, but its preemptor (job 300)
    is another job, found in the records around it."""
    dump = tmp_path / "dump.txt"
    dump.write_text("|".join(COLUMNS) + "\n" + "\n".join(CHAIN + [PREEMPTOR]) + "\n")
    from slurmkit import goodput

    analysis = goodput.analyse(input_path=str(dump), job_ids=["100"])
    [chain] = report.jobs(analysis.result)
    assert chain["job_id"] == "100" and chain["preemptions"] == 1, chain
    assert chain["spurious_requeues"] == 0
    assert chain["run_details"][1]["preempted_by"] == "300"
    [cost] = analysis.summary["preemptions"]
    assert cost["preemptor_queue"] == "team-a" and cost["preemptor_class"] == "inference"


def test_restarts_inside_the_allocation_from_events():
    """A --no-kill job loses c2 at T0+300 (last step), the ranks notice at T0+302, the
    survivors resume at T0+306 from the checkpoint of step 25 (done at T0+260); Slurm
    shrinks the job at T0+600 (a RESIZING record and the resized job's record)."""
    lines = [row(40, 0, "RESIZING", T0, T0, T0 + 10, T0 + 600),
             row(40, 0, "COMPLETED", T0 + 600, T0 + 600, T0 + 600, T0 + 1010, nodes="c[1,3-4]",
                 nnodes=3, gpus=24)]
    jobs = {}
    for step in range(1, 30):
        add_event(jobs, {"event": "step", "job_id": "40", "run": 0, "step": step,
                         "time_epoch_s": T0 + 10 + 10 * step})
    add_event(jobs, json.dumps({
        "time_epoch_s": T0 + 302, "event": "restart", "job_id": "40", "run": 0, "attempt": 1,
        "dead_nodes": ["c2"], "lost_ranks": [2, 3], "spare_used": None,
        "nodes": ["c1", "c3", "c4"], "checkpoint_step": 25, "fault_epoch_s": T0 + 300,
        "detected_epoch_s": T0 + 302, "resumed_epoch_s": T0 + 306}))
    for step in range(26, 96):
        add_event(jobs, {"event": "step", "job_id": "40", "run": 0, "step": step,
                         "time_epoch_s": T0 + 306 + 10 * (step - 26)})
    for job_events in jobs.values():
        for run in job_events.runs.values():
            run.steps.sort()
    summary, result = built(lines, jobs, now=T0 + 2000)
    chain = job(result, 40)
    assert chain["runs"] == 1 and chain["requeues"] == 0 and chain["resizes"] == 1
    assert chain["inplace_restarts"] == 1 and chain["node_failures"] == 1
    [item] = chain["run_details"][0]["inplace_restarts"]
    assert item["dead_nodes"] == ["c2"] and item["failure_detection_s"] == 2
    assert item["restart_overhead_s"] == 4 and item["lost_work_s"] == 40
    assert item["lost_steps"] == 4  # steps 26..29 done again
    buckets = chain["badput_s"]
    assert buckets["failure_detection"] == 2 and buckets["restart_overhead"] == 4
    assert buckets["lost_work"] == 40 and buckets["queue_after_requeue"] == 0
    assert chain["ettr"] == round((1010 - 10 - 46) / 1010, 4)
    # GPU-hours follow the resize: 32 GPUs until T0+600, 24 after.
    assert chain["gpu_hours"] == round((32 * 590 + 24 * 410) / 3600, 3)
    assert summary["node_failures"][0] == {"node": "c2", "node_fail_runs": 0,
                                           "blamed_failures": None, "inplace_restarts": 1}
    table = report.format_table(summary, result)
    assert "restarts inside the allocation" in table and "c2" in table


def test_scenario_dumps_in_both_formats_agree_exactly(data, tmp_path):
    """Dumps written by hand in sacct 24.11's formats (parsable2 with its header, the
    columns reordered and the name in the middle; --json with v0.0.42 entries): an
    array, a het job, '|' and non-ASCII names, a --no-kill resize, a grace-time
    preemption followed by Slurm's spurious requeue, a node failure, running and
    pending jobs."""
    expected = {  # job: (runs, final state, node failures, preemptions, spurious, resizes)
        "20_1": (1, "COMPLETED", 0, 0, 0, 0), "20_2": (1, "COMPLETED", 0, 0, 0, 0),
        "20_3": (1, "FAILED", 0, 0, 0, 0), "30+0": (1, "COMPLETED", 0, 0, 0, 0),
        "30+1": (1, "COMPLETED", 0, 0, 0, 0), "40": (1, "COMPLETED", 0, 0, 0, 1),
        "50": (3, "COMPLETED", 0, 1, 1, 0), "51": (1, "COMPLETED", 0, 0, 0, 0),
        "60": (2, "COMPLETED", 1, 0, 0, 0), "70": (1, "RUNNING", 0, 0, 0, 0),
        "71": (1, "PENDING", 0, 0, 0, 0), "80_[4-10]": (1, "PENDING", 0, 0, 0, 0)}
    results = []
    for name in ("sacct_scenarios_parsable2.txt", "sacct_scenarios.json"):
        path = tmp_path / name
        path.write_text(data(name), encoding="utf-8")
        stats = load.IngestStats()
        runs = load.read_input(str(path), stats=stats)
        summary, result = report.build(runs, stats=stats, now=T0 + 3000)
        got = {j["job_id"]: j for j in report.jobs(result)}
        assert {k: (j["runs"], j["final_state"], j["node_failures"], j["preemptions"],
                    j["spurious_requeues"], j["resizes"]) for k, j in got.items()} == expected
        assert got["20_1"]["name"] == "sweep|lr=3e-4 ünï" and got["50"]["name"] == "train-λ"
        assert got["20_3"]["job_id_raw"] == 20 and got["20_1"]["job_id_raw"] == 21
        assert got["50"]["badput_s"]["other"] == 40 + 1  # the spurious wait and no-op run
        assert got["40"]["badput_s"]["lost_work"] == 0  # a resize is no requeue
        assert stats.malformed == 0
        results.append(list(report.jobs(result)))
    assert results[0] == results[1]
    # --job: a task, a whole array, a het component.
    chosen = report.select_jobs(runs, ["20"])
    assert {chosen.shown_id(i) for i in range(len(chosen))} == {"20_1", "20_2", "20_3"}
    assert len(report.select_jobs(runs, ["20_3"])) == 1 and len(report.select_jobs(runs, ["30"])) == 2


# ----------------------------------------------------------------- loader properties

_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=12) | \
    st.sampled_from(["a|b", "x\ny", "multi\n12|x", "\x1b]8;;evil\x07", "ünï⚡", "=cmd", "",
                     "7|", "|", "\n"])


@st.composite
def dumps(draw):
    columns = list(COLUMNS)
    if draw(st.booleans()):  # any column order; a job id first keeps names with newlines
        rest = columns[2:]
        random.Random(draw(st.integers(0, 1000))).shuffle(rest)
        columns = columns[:2] + rest
    lines = []
    for job in range(draw(st.integers(1, 8))):
        for restart in range(draw(st.integers(1, 3))):
            values = dict(zip(COLUMNS, row(
                500 + job, restart, draw(st.sampled_from(["COMPLETED", "NODE_FAIL", "PREEMPTED",
                                                          "RUNNING", "CANCELLED by 5", "RESIZING",
                                                          "ODD"])),
                T0, T0 + draw(st.integers(0, 9)),
                draw(st.sampled_from([T0 + 10, None, "2027-01-15T08:00:00", "²"])),
                draw(st.sampled_from([T0 + 99, None, "bogus"])),
                nodes=draw(st.sampled_from(["c[1-4]", "c7", "gpu[0010-0012]", "c[1-2,5]", "",
                                            "None assigned", "c[x]", "p" * 37 + "[0001-0064]",
                                            "p" * 38 + "[0001-0064]", "q" * 47 + "7"])),
                name=draw(_NAMES), display=draw(st.sampled_from([None, f"{500 + job}_1"]))
            ).split("|", len(COLUMNS) - 1), strict=False))
            lines.append("|".join(values[column] for column in columns))
    if draw(st.booleans()):
        lines.append(lines[-1][:draw(st.integers(0, 30))])  # cut short
    if draw(st.booleans()):
        lines.insert(0, f"{500}.batch|" + "|" * (len(columns) - 2))
    return tuple(columns), "\n".join(lines) + "\n"


def _table(runs):
    return [tuple(int(getattr(runs, name)[i]) for name in load._INT_FIELDS)
            + tuple(getattr(runs, name)[i] for name in load._TEXT_FIELDS) for i in range(len(runs))]


@settings(max_examples=300, deadline=None)
@given(dumps())
def test_the_fast_path_and_the_fallback_read_identical_tables(tmp_path_factory, dump):
    columns, text = dump
    path = tmp_path_factory.mktemp("dump") / "sacct.txt"
    path.write_text("|".join(columns) + "\n" + text, encoding="utf-8")
    fast_stats, slow_stats = load.IngestStats(), load.IngestStats()
    fast = load.read_input(str(path), stats=fast_stats, fast=True)
    slow = load.read_input(str(path), stats=slow_stats, fast=False)
    assert _table(fast) == _table(slow)
    for name in ("rows", "runs", "steps_skipped", "malformed", "unknown_states", "bad_times",
                 "truncated"):
        assert getattr(fast_stats, name) == getattr(slow_stats, name), name


def test_the_fast_path_is_cut_in_blocks_and_workers_alike(tmp_path, monkeypatch):
    lines = [row(1000 + i, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61, name=n, nodes=f"c{i}")
             for i, n in zip(range(3000), ["a|b", "x\ny", "plain", "ü"] * 750, strict=True)]
    path = tmp_path / "sacct.txt"
    path.write_text("|".join(COLUMNS) + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(load, "_BLOCK", 4096)
    one = load.read_input(str(path), stats=load.IngestStats(), workers=1)
    several = load.read_input(str(path), stats=load.IngestStats(), workers=2)
    whole = load.read_input(str(path), stats=load.IngestStats(), fast=False)
    assert _table(one) == _table(several) == _table(whole) and len(one) == 3000
    assert {one.name[i] for i in range(4)} == {"a|b", "x\ny", "plain", "ü"}


# ----------------------------------------------------------------- engine vs oracle

_STATES = ["COMPLETED", "NODE_FAIL", "PREEMPTED", "REQUEUED", "FAILED", "CANCELLED",
           "RUNNING", "PENDING", "TIMEOUT", "RESIZING"]


@st.composite
def chains_(draw):
    records = []
    for job in range(draw(st.integers(1, 6))):
        clock = T0 + draw(st.integers(0, 1000))
        node = draw(st.sampled_from(["c1", "c[1-2]", "c[2-3]", "c[1,3]"]))
        for restart in range(draw(st.integers(1, 4))):
            state = draw(st.sampled_from(_STATES))
            eligible = clock + draw(st.integers(0, 40))
            start = eligible + draw(st.integers(0, 100)) if state != "PENDING" else 0
            end = start + draw(st.integers(1, 500)) if start and state != "RUNNING" else 0
            records.append({"job_id": 300 + job, "display": "", "restarts": restart,
                            "state": state, "submit": clock, "eligible": eligible,
                            "start": start, "end": end, "node_list": node,
                            "gpus": draw(st.sampled_from([0, 8, 32]))})
            clock = end or eligible
    return records


@settings(max_examples=300, deadline=None)
@given(chains_())
def test_the_engine_equals_the_list_based_oracle(records):
    now = T0 + 100_000
    lines = [row(r["job_id"], r["restarts"], r["state"], r["submit"], r["eligible"],
                 r["start"] or None, r["end"] or None, nodes=r["node_list"], gpus=r["gpus"])
             for r in records]
    summary, result = built(lines, now=now)
    expected = goodput_oracle.jobs(records, now)
    got = {(j["job_id_raw"], ""): j for j in report.jobs(result)}
    assert set(got) == set(expected)
    for key, want in expected.items():
        have = got[key]
        assert have["runs"] == want["runs"] and have["final_state"] == want["final_state"]
        assert have["wallclock_s"] == want["wallclock"]
        assert have["productive_s"] == pytest.approx(want["productive"])
        for bucket, seconds in want["buckets"].items():
            assert have["badput_s"][bucket] == pytest.approx(seconds), bucket
        assert (have["preemptions"], have["spurious_requeues"], have["node_failures"]) == \
            (want["preemptions"], want["spurious"], want["node_failures"])


# ----------------------------------------------------------------- formats and odd input

HOSTILE = [
    "garbage line without separators",
    row(200, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61, name="a|b|c", gpus=8, nnodes=1, nodes="c1"),
    row(201, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61, name="multi\nline|x", gpus=8, nnodes=1,
        nodes="c2"),
    row(202, 0, "WEIRD_NEW_STATE", T0, T0, T0 + 1, T0 + 61, name="<script>alert(1)</script> $x$",
        gpus=8, nnodes=1, nodes="c3"),
    row(203, 0, "CANCELLED by 2001", T0, T0, None, None, name="ünï⚡\x1b[31m", gpus=0,
        nodes="None assigned", nnodes=0),
    "203.batch|203.batch||team-a|||COMPLETED|0|0|0|0|0|1|c1||0:0|batch",
    row(204, 0, "COMPLETED", "2026-11-28T07:00:00", "2026-11-28T07:00:00", "2026-11-28T07:00:05",
        "bogus-time", name="=cmd|' /C calc'!A0", gpus=8, nnodes=1, nodes="c4"),
    row(205, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61, name="\tcalc", gpus=8, nnodes=1, nodes="c4",
        exit_code="\r0:0"),
]


def test_hostile_and_odd_sacct_content_is_counted_not_fatal():
    truncated = HOSTILE + [row(206, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61)[:25]]
    runs, stats = runs_of(truncated)
    names = {int(runs.job_id[i]): runs.name[i] for i in range(len(runs))}
    assert names[200] == "a|b|c" and names[201] == "multi\nline|x"
    assert stats.unknown_states == {"WEIRD_NEW_STATE": 1}
    assert stats.steps_skipped == 1 and stats.malformed == 2 and stats.truncated
    assert stats.bad_times == 1
    summary, result = report.build(runs, stats=stats, now=T0 + 100, capacity_gpus=32)
    table = report.format_table(summary, result)
    assert "1 runs in unknown state WEIRD_NEW_STATE" in table
    assert "the input ended in the middle of a row" in table
    assert "\x1b" not in table and "\\x1b[31m" in table  # escaped, never sent raw
    html = report.format_html(summary, result)
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    out = io.StringIO()
    report.write_csv(summary, result, out)
    by_id = {r["job_id"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
    assert by_id["201"]["name"] == "multi\nline|x"
    assert by_id["204"]["name"].startswith("'=") and by_id["205"]["name"] == "'\tcalc"


def test_json_report_lists_every_job_and_equals_the_records():
    summary, result = built(CHAIN + [PREEMPTOR] + HOSTILE[1:4], chain_events(),
                            classes=("training", "inference"), capacity_gpus=32)
    out = io.StringIO()
    report.write_json(summary, result, out)
    payload = json.loads(out.getvalue())
    assert payload["jobs"] == json.loads(json.dumps(list(report.jobs(result))))
    jobs = {j["job_id"]: j for j in payload["jobs"]}
    assert set(jobs) == {"100", "200", "201", "202", "300"}
    assert set(payload["queues"]) == {"team-a"} and set(payload["classes"]) == {"training",
                                                                                "inference"}
    assert payload["totals"]["jobs"] == 5 and payload["utilisation"]["capacity_gpus"] == 32
    [cost] = payload["preemptions"]
    assert cost["preemptor_class"] == "inference" and cost["victim_class"] == "training"
    assert cost["gpu_hours_lost"] == round(24 * (40 + 55) / 3600, 3)


def test_node_failure_table_blames_with_node_events():
    # c2 went down as the run ended; c3's DOWN event is an earlier failure, resumed
    # before this run started (it must not be blamed for this one).
    summary, result = built(CHAIN, node_events={"c2": [T0 + 300], "c3": [T0 - 60]})
    table = summary["node_failures"]
    assert table[0]["node"] == "c2" and table[0]["blamed_failures"] == 1
    assert {r["node"] for r in table} == {"c1", "c2", "c3", "c4"}
    assert all(r["blamed_failures"] == 0 and r["node_fail_runs"] == 1 for r in table[1:])


def test_failure_rate_is_measured_at_any_size_or_says_why_not():
    lines = [row(i, 0, "NODE_FAIL", T0, T0, T0, T0 + 86400, nodes=f"c{i}", nnodes=1)
             for i in range(1, 5)] + [row(9, 0, "COMPLETED", T0, T0, T0, T0 + 86400,
                                          nodes="c[5-10]", nnodes=6)]
    summary, _ = built(lines, now=T0 + 86400)
    rate = summary["failure_rate"]
    assert rate["source"] == "measured" and rate["cluster_nodes"] == 10
    assert rate["failures_per_node_day"] == 4 / 10
    summary, _ = built(lines[-1:], now=T0 + 86400)
    assert summary["failure_rate"]["source"].startswith("assumed")
    assert "too few" in summary["failure_rate"]["source"]


def test_expected_ettr_and_optimal_interval():
    value = engine.expected_ettr("1", 4, 0.8, failures_per_node_day=6.5 / 1000, restart_s=60,
                                 interval_s=600, write_s=3.0)
    mttf_days = 1 / (4 * 6.5 / 1000)
    assert value["optimal_interval_s"] == round((2 * 3.0 * mttf_days * 86400) ** 0.5, 1)
    assert value["expected_ettr"] == round((1 - 4 * 6.5e-3 * (60 / 86400 + 600 / 86400 / 2))
                                           / (1 + 3.0 / 600), 4)


def test_a_record_left_pending_by_a_controller_restart_is_not_a_run():
    chain = [row(300, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 80),
             row(300, 1, "PENDING", T0 + 70, T0 + 100, None, None, nodes="None assigned"),
             row(300, 1, "COMPLETED", T0 + 80, T0 + 110, T0 + 112, T0 + 142, nodes="c[2-4]",
                 nnodes=3, gpus=24)]
    summary, result = built(chain, now=T0 + 200)
    [record] = report.jobs(result)
    assert record["runs"] == 2 and [r["state"] for r in record["run_details"]] == \
        ["NODE_FAIL", "COMPLETED"]
    assert record["badput_s"]["queue_after_requeue"] == 112 - 80
    assert summary["ingest"]["superseded_records"] == 1
    summary, _ = built([row(301, 0, "PENDING", T0, T0, None, None, nodes="None assigned")],
                       now=T0 + 200)
    assert summary["ingest"]["superseded_records"] == 0 and summary["totals"]["jobs"] == 1


def test_html_without_matplotlib_says_how_to_get_it(monkeypatch):
    import sys

    from slurmkit.errors import SlurmkitError

    summary, result = built(CHAIN)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SlurmkitError, match="python3-matplotlib.*--format table, json or csv"):
        report.format_html(summary, result)


def _goodput(*args):
    return CliRunner().invoke(cli, ["goodput", "--no-progress", *args], standalone_mode=False)


@pytest.mark.parametrize("content", [
    '{"jobs": 5}', "[" * 100_000, '{"jobs": [' + "[" * 50_000 + "]}", "\xff\xfe{",
    "JobID|Name\n1|x\n", ""])
def test_a_bad_input_file_is_one_error_line_with_exit_2(tmp_path, content):
    from slurmkit.cli import main

    path = tmp_path / "dump"
    path.write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode())
    code, err = _main(main, ["goodput", "--input", str(path), "--no-progress"])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


def _main(main, argv):
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code, err.getvalue()


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_fifo_or_a_device_as_input_is_refused_at_once(tmp_path, kind):
    from slurmkit.cli import main

    path = tmp_path / "dump"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    code, err = _main(main, ["goodput", "--input", str(path), "--no-progress"])
    assert code == 2 and "not a regular file" in err


def test_unicode_digits_and_bad_events_are_counted(tmp_path):
    from slurmkit.cli import main

    dump = tmp_path / "dump.txt"
    dump.write_text("|".join(COLUMNS) + "\n" + "\n".join([
        row(1, 0, "COMPLETED", "١٢٣", T0, T0 + 1, T0 + 61, nnodes="²"),
        row(2, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61).replace("|COMPLETED|0|", "|COMPLETED|٣|")
    ]) + "\n",
        encoding="utf-8")
    events = tmp_path / "ckpt"
    events.mkdir()
    (events / "events.jsonl").write_text('{"job_id": "1", "event": "step", "step": "x"}\n'
                                         '[1, 2]\n{"job_id": "1", "event": "restart"}\nnot json\n'
                                         '{"job_id": "1", "event": "step", "step": 3, '
                                         '"time_epoch_s": 1e400}\n')
    os.mkfifo(events / "sub")
    (events / "deeper").mkdir()
    os.mkfifo(events / "deeper" / "events.jsonl")
    code, err = _main(main, ["goodput", "--input", str(dump), "--events", str(events),
                             "--format", "json", "-o", str(tmp_path / "out.json"),
                             "--no-progress"])
    assert code == 0, err
    payload = json.loads((tmp_path / "out.json").read_text())
    one, two = payload["jobs"]
    assert one["nodes"] == 0 and one["eligible_epoch_s"] == T0 and two["job_id"] == "2"
    assert two["run_details"][0]["run"] == 0  # Restarts "٣" reads as no number
    stats = load.IngestStats()
    load.from_json('{"jobs": [{"job_id": "\u00b2"}, 7]}', stats=stats)
    assert stats.malformed == 2
    assert load_events([events])[1].bad_lines == 3
    code, err = _main(main, ["goodput", "--input", str(dump), "--events",
                             str(events / "sub"), "--no-progress"])
    assert code == 2 and "not a directory or a regular file" in err


def test_progress_bar_on_long_ingests(tmp_path):
    dump = tmp_path / "dump.txt"
    dump.write_text("|".join(COLUMNS) + "\n" + "\n".join(CHAIN) + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["goodput", "--input", str(dump), "--progress"])
    assert result.exit_code == 0 and "reading the sacct dump" in result.stderr


def test_job_option_names_tasks_and_refuses_other_text(tmp_path):
    result = _goodput("--job", "12;rm", "--input", "/nonexistent")
    assert result.exit_code != 0


def test_show_jobs_escapes_control_characters(monkeypatch):
    from slurmkit.cli._context import Connection
    from slurmkit.slurm.models import Job

    class Fake:
        def jobs(self, **_):
            return [Job(job_id=1, name="x\x1b]52;c;ZXZpbA==\x07y", user="u", account="a\x9b31m",
                        partition="p", qos="q", state="RUNNING", state_flags=(), reason="",
                        nodes=(), node_count=1, submit_epoch_s=None, eligible_epoch_s=None,
                        start_epoch_s=None, end_epoch_s=None, time_limit_min=None,
                        restart_count=0, requeue=False, priority=0)]

    monkeypatch.setattr(Connection, "client", lambda self: Fake())
    result = CliRunner().invoke(cli, ["show", "jobs"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x9b" not in result.output
    assert "x\\x1b]52;c;ZXZpbA==\\x07y" in result.output and "a\\x9b31m" in result.output


def test_no_import_circle_in_slurmkit():
    """Walk every module's imports (module level and inside functions) inside
    slurmkit/: the graph has no cycle."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "slurmkit"
    modules = {".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(
        ".__init__") for path in root.rglob("*.py")}
    graph = {}
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(
            ".__init__")
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from package import submodule`` needs the submodule, not the package
                for alias in node.names:
                    name = f"{node.module}.{alias.name}"
                    edges.add(name if name in modules else node.module)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
        graph[module] = {edge for edge in edges if edge.startswith("slurmkit")}
    graph = {module: {edge for edge in edges if edge in graph and edge != module}
             for module, edges in graph.items()}
    state: dict[str, int] = {}

    def visit(module, trail):
        state[module] = 1
        for edge in graph[module]:
            if state.get(edge) == 1:
                raise AssertionError(" -> ".join([*trail, module, edge]))
            if not state.get(edge):
                visit(edge, [*trail, module])
        state[module] = 2

    for module in graph:
        if not state.get(module):
            visit(module, [])
    assert "slurmkit.goodput.load" in graph


def test_the_goodput_package_is_one_small_engine():
    import pathlib

    package = pathlib.Path(__file__).resolve().parents[2] / "slurmkit" / "goodput"
    lines = sum(len(path.read_text().splitlines()) for path in package.glob("*.py"))
    assert lines < 2400
    assert sorted(path.name for path in package.glob("*.py")) == [
        "__init__.py", "engine.py", "events.py", "load.py", "plots.py", "report.py"]


def test_text_mask_and_take():
    text = load.Text(np.array([0, 1, 0], np.int32), ["a", "b"])
    assert text.mask({"a"}).tolist() == [True, False, True]


def test_the_report_is_made_in_the_library_and_only_printed_by_the_cli(monkeypatch):
    """`slurmkit goodput` = slurmkit.goodput.analyse + write; its module does no work
    (not even importing numpy), and its choices and defaults are the library's."""
    import subprocess
    import sys
    import time

    monkeypatch.setattr(time, "time", lambda: 1_800_100_000.0)  # "now" ends running jobs

    from slurmkit.cli import goodput as goodput_cli
    from slurmkit.goodput import FORMATS, analyse, engine, write
    from tests.unit.conftest import DATA

    dump = str(DATA / "sacct_scenarios_parsable2.txt")
    for output_format in FORMATS[:3]:  # html: test_goodput_html
        stream = io.StringIO()
        write(analyse(input_path=dump, accounts=["team-a"]), output_format, stream)
        printed = _goodput("--input", dump, "-A", "team-a", "--format", output_format)
        assert printed.exit_code == 0, printed.output
        if output_format == "json":  # generated_epoch_s and ingest_seconds are clocks
            mine, theirs = json.loads(stream.getvalue()), json.loads(printed.output)
            for document in (mine, theirs):
                document.pop("generated_epoch_s")
                document["ingest"].pop("ingest_seconds")
            assert mine == theirs
        else:
            assert stream.getvalue() == printed.output
    options = {option.name: option for option in goodput_cli.goodput.params}
    assert tuple(options["output_format"].type.choices) == FORMATS
    assert options["window_s"].default == engine.DEFAULT_PREEMPTOR_WINDOW_S
    code = "import sys, slurmkit.cli.goodput; assert 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------- the record writer

def _texts(matrix):
    return [bytes(line[line != report._PAD]).decode() for line in matrix]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats() | st.sampled_from([-0.0, 0.04, -0.04, 0.05, 0.15, 2.5, 1e-5, 1e15,
                                                 99999999999999.95, 123456789.0123, 1e300]),
                min_size=1, max_size=30), st.integers(1, 4))
def test_decimals_are_written_as_python_prints_them(values, decimals):
    array = np.array(values)
    with np.errstate(all="ignore"):  # overflow to inf, as np.round does
        expected = [repr(value) for value in np.round(array, decimals).tolist()]
        assert _texts(report._decimal(array, decimals)) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-2 ** 63, 2 ** 63 - 1) | st.integers(-20_000, 20_000), min_size=1,
                max_size=30))
def test_integers_are_written_as_python_prints_them(values):
    assert _texts(report._integer(np.array(values, np.int64))) == [str(v) for v in values]


def test_records_are_the_same_whatever_the_batch_and_chunk_sizes(monkeypatch):
    names = ["x" * 5000 + "|y", "nul\x00byte", "=SUM(A1)", "ünï⚡", 'say "hi", then\nleave']
    lines = CHAIN + [PREEMPTOR] + HOSTILE[1:] + [
        row(400 + i, 0, "RUNNING", T0, T0, T0 + 5, None, name=name, nodes=f"c{i}", nnodes=1)
        for i, name in enumerate(names)]
    summary, result = built(lines, chain_events(), now=T0 + 5000)

    def written():
        as_json, as_csv = io.StringIO(), io.StringIO()
        report.write_json(summary, result, as_json)
        report.write_csv(summary, result, as_csv)
        return as_json.getvalue(), as_csv.getvalue()

    whole = written()
    # A batch wider than the limit is halved down to single jobs; one row per chunk.
    monkeypatch.setattr(report, "_MATRIX_BYTES", 4096)
    monkeypatch.setattr(report, "_CHUNK_BYTES", 1)
    assert written() == whole
    jobs = json.loads(whole[0])["jobs"]
    assert {job["name"] for job in jobs} >= set(names)
    rows = {row["job_id"]: row for row in csv.DictReader(io.StringIO(whole[1]))}
    assert len(rows) == len(jobs)
    for job in jobs:  # the CSV holds the JSON's values, strings guarded against formulas
        for key in report.CSV_FIELDS:
            value = job["badput_s"][key[7:-2]] if key.startswith("badput_") else job[key]
            if isinstance(value, str) and value.startswith(report._FORMULA):
                value = "'" + value
            assert rows[job["job_id"]][key] == ("" if value is None else str(value)), key


def test_string_codes_see_only_the_bytes_of_each_span():
    data = b"abc|abcX|abc|abcdefghij|abcdefghik|" + b"z" * 300 + b"|" + b"z" * 300 + b"\n"
    buf = np.frombuffer(data + bytes(load._PAD), np.uint8)
    starts = np.array([0, 4, 4, 9, 13, 24, 35, 336])
    ends = np.array([3, 7, 8, 12, 23, 34, 335, 636])
    text = load._codes(data, buf, starts, ends)
    assert [text[i] for i in range(8)] == ["abc", "abc", "abcX", "abc", "abcdefghij",
                                           "abcdefghik", "z" * 300, "z" * 300]
    assert len(text.values) == 5 and len(set(text.codes[[0, 1, 3]].tolist())) == 1


def test_a_lone_surrogate_in_a_json_dump_is_escaped_in_the_records():
    stats = load.IngestStats()
    runs = load.from_json(json.dumps({"jobs": [{
        "job_id": 7, "name": "bad\ud800name", "state": {"current": ["COMPLETED"]},
        "time": {"submission": T0, "eligible": T0, "start": T0 + 1, "end": T0 + 61}}]}),
        stats=stats)
    summary, result = report.build(runs, stats=stats, now=T0 + 100)
    as_json, as_csv = io.StringIO(), io.StringIO()
    report.write_json(summary, result, as_json)
    report.write_csv(summary, result, as_csv)
    assert json.loads(as_json.getvalue())["jobs"][0]["name"] == "bad\ud800name"
    assert "bad?name" in as_csv.getvalue()


# ------------------------------------------------------------- small pieces, exactly


@pytest.mark.parametrize("qos, partition, classes, expected", [
    ("training", "borrow-inference", (), "training"),  # no classes: the QOS
    ("", "guar-a", (), "unknown"),
    ("training", "borrow-inference", ("training", "inference"), "training"),
    ("normal", "borrow-inference", ("training", "inference"), "inference"),
    ("normal", "borrow-other", ("training", "inference"), "normal"),
    ("normal", "guar-a-inference", ("training", "inference"), "normal"),  # not borrowed
    ("", "guar-a", ("training",), "unknown"),
])
def test_the_workload_class_of_a_record(qos, partition, classes, expected):
    assert engine.classify(qos, partition, classes) == expected


def test_expected_ettr_by_hand():
    """4 nodes that fail 0.007 times a day each: MTTF = 1 / (4 x 0.007) days = 857.14 h;
    the optimal interval sqrt(2 x 30.1234 s x MTTF) = 13634.7 s; E[ETTR] = (1 - 0.028
    x (600 + 1800.44 / 2) / 86400) / (1 + 30.1234 / 1800.44) = 0.99951 / 1.01673 = 0.9831."""
    assert engine.expected_ettr(
        "7_2", 4, 0.812345, failures_per_node_day=0.007, restart_s=600, interval_s=1800.44,
        write_s=30.1234) == {
            "job_id": "7_2", "nodes": 4, "measured_ettr": 0.8123, "mttf_h": 857.14,
            "optimal_interval_s": 13634.7, "expected_ettr": 0.9831,
            "checkpoint_interval_s": 1800.4, "checkpoint_write_s": 30.123}


def test_expected_ettr_without_failures_or_without_checkpoints():
    # No failures: no MTTF, no optimal interval; only the checkpoint cost, 1 / (1 + 6/600).
    assert engine.expected_ettr("1", 0, None, failures_per_node_day=0, restart_s=60,
                                interval_s=600, write_s=6) == {
        "job_id": "1", "nodes": 1, "measured_ettr": None, "mttf_h": None,
        "expected_ettr": 0.9901, "checkpoint_interval_s": 600.0, "checkpoint_write_s": 6.0}
    # No periodic checkpoints seen: the MTTF only.
    assert engine.expected_ettr("2", 2, 0.5, failures_per_node_day=0.5, restart_s=60,
                                interval_s=None, write_s=None) == {
        "job_id": "2", "nodes": 2, "measured_ettr": 0.5, "mttf_h": 24.0}
    # A write time but a single checkpoint (no interval): the optimum, no expectation.
    assert engine.expected_ettr("3", 2, 0.5, failures_per_node_day=0.5, restart_s=60,
                                interval_s=None, write_s=8.0) == {
        "job_id": "3", "nodes": 2, "measured_ettr": 0.5, "mttf_h": 24.0,
        "optimal_interval_s": round((2 * 8.0 * 86400) ** 0.5, 1)}


def test_checkpoint_interval_is_the_median_over_every_run():
    jobs = {}
    periodic = [(0, 700, 3.0), (0, 100, 2.0), (0, 400, 4.0), (1, 1000, 10.0), (1, 1100, 1.0)]
    for run, at, write in periodic:  # out of time order, as ranks' lines can be
        add_event(jobs, {"event": "checkpoint", "kind": "periodic", "job_id": "9", "run": run,
                         "step": at, "rank": 0, "write_s": write, "time_epoch_s": T0 + at})
    # Intervals 300, 300 (run 0) and 100 (run 1), never across runs; writes 1, 2, 3, 4, 10.
    assert engine.checkpoint_interval(jobs[9]) == (300, 3.0)
    assert engine.checkpoint_interval(None) == (None, None)
    add_event(jobs, {"event": "step", "job_id": "8", "run": 0, "step": 1, "time_epoch_s": T0})
    assert engine.checkpoint_interval(jobs[8]) == (None, None)


def test_a_long_job_gets_the_expected_ettr_from_its_own_checkpoints():
    """Jobs of an hour or more with events: the model beside the measured ETTR, fed with
    the job's own checkpoint interval and write time."""
    lines = [row(500, 0, "COMPLETED", T0, T0, T0 + 100, T0 + 4000)]
    jobs = {}
    for at, write in ((1000, 2.0), (2000, 3.0), (3000, 4.0)):
        add_event(jobs, {"event": "checkpoint", "kind": "periodic", "job_id": "500", "run": 0,
                         "step": at // 10, "rank": 0, "write_s": write,
                         "time_epoch_s": T0 + at})
    for step in range(1, 390):
        add_event(jobs, {"event": "step", "job_id": "500", "run": 0, "step": step,
                         "time_epoch_s": T0 + 100 + 10 * step})
    summary, _ = built(lines, jobs, now=T0 + 5000)
    [expected] = summary["expected_ettr"]
    rate = summary["failure_rate"]["failures_per_node_day"]
    assert expected == engine.expected_ettr("500", 4, 3900 / 4000, failures_per_node_day=rate,
                                            restart_s=0, interval_s=1000, write_s=3.0)
    assert expected["measured_ettr"] == 0.975 and expected["checkpoint_interval_s"] == 1000
    summary, _ = built(lines, jobs, now=T0 + 5000, long_job_hours=2)
    assert summary["expected_ettr"] == []


def test_utilisation_by_hand():
    """4 bins of 100 s over [T0, T0+400), 10 GPUs. Each record adds GPUs x the seconds
    it overlaps each bin; pending records, GPU-less ones and time outside the window
    add nothing; a running record counts to the window's end."""
    lines = [
        row(1, 0, "NODE_FAIL", T0 - 200, T0 - 200, T0 + 50, T0 + 150, gpus=8),
        row(1, 1, "COMPLETED", T0 + 150, T0 + 150, T0 + 160, T0 + 250, gpus=8),
        row(2, 0, "RUNNING", T0, T0, T0 + 300, None, gpus=1, qos="inference"),
        row(3, 0, "COMPLETED", T0 - 300, T0 - 300, T0 - 100, T0 + 20, gpus=4),
        row(4, 0, "PENDING", T0, T0, None, None, gpus=8, qos="inference",
            nodes="None assigned"),
        row(5, 0, "COMPLETED", T0, T0, T0 + 450, T0 + 500, gpus=2, qos="inference"),
        row(6, 0, "COMPLETED", T0, T0, T0 + 10, T0 + 390, gpus=0, qos="debug"),
    ]
    runs, _ = runs_of(lines)
    result = engine.compute(runs, now=T0 + 400)
    # training: bin 0: 8 x 50 (job 1) + 4 x 20 (job 3); bin 1: 8 x (50 + 40); bin 2: 8 x 50.
    assert engine.utilisation(result, 10, T0, T0 + 400, bins=4) == {
        "start_epoch_s": T0, "bin_s": 100.0, "capacity_gpus": 10,
        "classes": {"training": [0.48, 0.72, 0.4, 0.0], "inference": [0.0, 0.0, 0.0, 0.1]},
        "idle": [0.52, 0.28, 0.6, 0.9]}
    hourly = engine.utilisation(result, 10, T0, T0 + 48)  # 48 bins by default, of >= 1 s
    assert hourly["bin_s"] == 1.0 and len(hourly["idle"]) == 48
    assert engine.utilisation(result, 0, T0, T0 + 400, bins=4)["classes"]["inference"] == \
        [0.0, 0.0, 0.0, 1.0]  # no capacity known: fractions of one GPU
    idle, _ = runs_of(lines[-1:])
    assert engine.utilisation(engine.compute(idle, now=T0 + 400), 10, T0, T0 + 400, bins=4) \
        == {"start_epoch_s": T0, "bin_s": 100.0, "capacity_gpus": 10, "classes": {},
            "idle": [1.0, 1.0, 1.0, 1.0]}


# ------------------------------------------------------------- who preempted whom


def record_of(runs, job_id):
    [record] = np.flatnonzero(runs.job_id == job_id).tolist()
    return record


def preemptor_jobs(runs, victims, pool=None, **options):
    victim_records = np.array([record_of(runs, job_id) for job_id in victims], np.int64)
    found = engine.find_preemptors(runs, victim_records, pool=pool, **options)
    pool = runs if pool is None else pool
    return [int(pool.job_id[record]) if record >= 0 else record for record in found.tolist()]


def _job(job_id, nodes, start, end=None, state="COMPLETED", **options):
    return row(job_id, 0, state, start - 10, start - 10, start, end or start + 50, nodes=nodes,
               **options)


PREEMPTIONS = [
    # Victim 10 ends at +1000 on c[1-4]: 11 starts 4 s before (in the 5 s allowed), 12
    # starts 3 s after: the closer one wins; 13 is on other nodes.
    _job(10, "c[1-4]", T0, T0 + 1000, "PREEMPTED"),
    _job(11, "c[3-4]", T0 + 996), _job(12, "c4", T0 + 1003), _job(13, "c[5-6]", T0 + 1000),
    # Victim 20: 21 starts exactly at the end of the 120 s window.
    _job(20, "c[10-11]", T0, T0 + 2000, "PREEMPTED"), _job(21, "c11", T0 + 2120),
    # Victim 30 on two separate nodes: 31 sits between them, 32 shares c22.
    _job(30, "c[20,22]", T0, T0 + 3000, "PREEMPTED"), _job(31, "c21", T0 + 3001),
    _job(32, "c[22-23]", T0 + 3050),
    # Victim 40: 41 starts 6 s early, 42 121 s late, and 40's own next run is not another
    # job.
    _job(40, "c[30-31]", T0, T0 + 4000, "PREEMPTED"), _job(41, "c30", T0 + 3994),
    _job(42, "c31", T0 + 4121), row(40, 1, "COMPLETED", T0, T0, T0 + 4010, T0 + 4100,
                                    nodes="c30"),
]


def test_the_preemptor_is_the_closest_start_on_the_victims_nodes_in_the_window():
    runs, _ = runs_of(PREEMPTIONS)
    victims = [10, 20, 30]
    assert preemptor_jobs(runs, victims) == [12, 21, 32]
    victim_40 = np.flatnonzero((runs.job_id == 40) & (runs.restarts == 0))
    assert engine.find_preemptors(runs, victim_40).tolist() == [-1]
    # In batches: the same answers, also after a batch without candidates in the window
    # (50: nothing starts near its end) or without one on its nodes (40).
    assert preemptor_jobs(runs, victims, batch=1) == [12, 21, 32]
    assert preemptor_jobs(runs, victims, batch=2) == [12, 21, 32]
    runs, _ = runs_of(PREEMPTIONS + [_job(50, "c[40-41]", T0, T0 + 9000, "PREEMPTED")])
    victim_40 = np.flatnonzero((runs.job_id == 40) & (runs.restarts == 0))
    first_runs = [record_of(runs, 50)] + victim_40.tolist() + [
        record_of(runs, job_id) for job_id in victims]
    assert engine.find_preemptors(runs, np.array(first_runs), batch=1).tolist()[:2] == [-1, -1]
    assert [int(runs.job_id[r]) for r in engine.find_preemptors(
        runs, np.array(first_runs), batch=1).tolist()[2:]] == [12, 21, 32]
    assert preemptor_jobs(runs, [20], window_s=119) == [-1]


def test_with_ranks_only_a_higher_class_or_a_guaranteed_partition_preempts():
    ranks = {"training": 1, "inference": 2}
    lines = [
        # 50 (training, borrowed): 51 (training) is closest but not higher; 52 is.
        _job(50, "c[1-2]", T0, T0 + 1000, "PREEMPTED", qos="training",
             partition="borrow-training"),
        _job(51, "c1", T0 + 1001, qos="training", partition="borrow-training"),
        _job(52, "c2", T0 + 1010, qos="inference", partition="borrow-inference"),
        # 60 (inference, borrowed): 62 (inference) is not higher; 61 runs in its own
        # queue's guaranteed partition, which reclaims whatever its class.
        _job(60, "c[5-6]", T0, T0 + 2000, "PREEMPTED", qos="inference",
             partition="borrow-inference"),
        _job(61, "c5", T0 + 2002, qos="training", partition="guar-a"),
        _job(62, "c6", T0 + 2001, qos="inference", partition="borrow-inference"),
        # 70: QOS "normal" in a borrowed partition is that partition's class (training);
        # 71 (normal, borrow-inference) is inference: higher.
        _job(70, "c[8-9]", T0, T0 + 3000, "PREEMPTED", qos="normal",
             partition="borrow-training"),
        _job(71, "c8", T0 + 3001, qos="normal", partition="borrow-inference"),
        # 80: a class without a rank (0) is below every ranked one.
        _job(80, "c[12-13]", T0, T0 + 4000, "PREEMPTED", qos="debug", partition="borrow-debug"),
        _job(81, "c12", T0 + 4001, qos="training", partition="borrow-training"),
        # 90: a QOS that is a class is the class, whatever borrowed partition it runs in.
        _job(90, "c[15-16]", T0, T0 + 5000, "PREEMPTED", qos="training",
             partition="borrow-training"),
        _job(91, "c15", T0 + 5001, qos="training", partition="borrow-inference"),
    ]
    runs, _ = runs_of(lines)
    assert preemptor_jobs(runs, [50, 60, 70, 80, 90], ranks=ranks) == [52, 61, 71, 81, -1]
    assert preemptor_jobs(runs, [50, 60, 70, 80, 90]) == [51, 62, 71, 81, 91]  # closest


def test_preemptors_of_selected_jobs_are_found_among_every_record():
    """``pool``: the selected jobs' preemptors are other jobs, found in every record;
    the answer is a record of the pool, also when the preemptor was selected too."""
    everything, _ = runs_of([
        _job(3, "c30", T0 + 1003),  # starts with 5 but elsewhere: first in the pool
        _job(5, "c[1-2]", T0 + 1003, qos="inference", partition="guar-a"),
        _job(7, "c9", T0 + 1001),
        _job(100, "c[1-4]", T0, T0 + 1000, "PREEMPTED", qos="training",
             partition="borrow-training"),
        _job(101, "c[7-8]", T0, T0 + 5000, "PREEMPTED", qos="training",
             partition="borrow-training"),
        _job(102, "c7", T0 + 5100, qos="training", partition="borrow-training"),
        _job(103, "c8", T0 + 5110, qos="inference", partition="borrow-inference"),
    ])
    selected = report.select_jobs(everything, ["100"])
    assert preemptor_jobs(selected, [100], pool=everything) == [5]
    both = report.select_jobs(everything, ["5", "100"])
    assert preemptor_jobs(both, [100], pool=everything) == [5]
    ranks = {"training": 1, "inference": 2}
    selected = report.select_jobs(everything, ["101"])
    assert preemptor_jobs(selected, [101], pool=everything) == [102]
    assert preemptor_jobs(selected, [101], pool=everything, ranks=ranks) == [103]
    assert preemptor_jobs(selected, [101], pool=everything, window_s=105) == [102]
    assert preemptor_jobs(selected, [101], pool=everything, window_s=99) == [-1]


# ------------------------------------------------------------- events, run by run


def trainer_events(jobs, job_id, run, *, steps=(), restore=None, final=None, restarts=()):
    """What rank 0 writes in one run: ``steps`` as (step, time), a restore of a step, a
    final checkpoint (step, time, stall_s), restarts inside the allocation (dicts)."""
    job_id = str(job_id)
    if restore is not None:
        add_event(jobs, {"event": "restore", "job_id": job_id, "run": run, "rank": 0,
                         "step": restore[0], "time_epoch_s": restore[1]})
    for step, at in steps:
        add_event(jobs, {"event": "step", "job_id": job_id, "run": run, "step": step,
                         "time_epoch_s": at})
    if final is not None:
        add_event(jobs, {"event": "checkpoint", "kind": "final", "job_id": job_id, "run": run,
                         "step": final[0], "rank": 0, "stall_s": final[2], "committed": True,
                         "time_epoch_s": final[1]})
    for restart in restarts:
        add_event(jobs, {"event": "restart", "job_id": job_id, "run": run, **restart})


def every_10_s(first, last, at):
    """Steps first..last, one every 10 s, step ``first`` at ``at``."""
    return [(step, at + 10 * (step - first)) for step in range(first, last + 1)]


def buckets_of(record):
    return {name: value for name, value in record["badput_s"].items() if value}


def test_work_done_before_a_preemption_makes_it_spurious_and_the_rest_other():
    """Job 700 wrote its final checkpoint (step 50), then its run was recorded
    PREEMPTED and a job started on its nodes; 701 did the same without a final
    checkpoint but at the last step of the job. Either way the work was done: the
    preemption is Slurm's spurious requeue, and the wait and the run after it are
    ``other``."""
    lines, jobs = [], {}
    for job_id, final in ((700, (50, T0 + 506, 0)), (701, None)):
        lines += [row(job_id, 0, "PREEMPTED", T0, T0, T0 + 10, T0 + 510),
                  row(job_id, 1, "COMPLETED", T0 + 510, T0 + 510, T0 + 600, T0 + 620)]
        trainer_events(jobs, job_id, 0, steps=every_10_s(1, 50, T0 + 15), final=final)
        trainer_events(jobs, job_id, 1, restore=(50, T0 + 602))
    lines.append(row(710, 0, "COMPLETED", T0 + 505, T0 + 505, T0 + 512, T0 + 560, nodes="c1",
                     qos="inference", partition="guar-team-a"))
    summary, result = built(lines, jobs, now=T0 + 1000)
    for job_id in (700, 701):
        chain = job(result, job_id)
        assert buckets_of(chain) == {"initial_queue": 10, "other": 90 + 20}, job_id
        assert chain["productive_s"] == 500 and chain["ettr"] == round(500 / 620, 4)
        assert chain["preemptions"] == 0 and chain["spurious_requeues"] == 1
        assert chain["evidence"] == "events"
    _, without_events = built(lines, now=T0 + 1000)
    assert job(without_events, 700)["preemptions"] == 1  # sacct alone cannot tell


def test_runs_with_and_without_events_in_one_job():
    """720: the first run wrote no events (sacct's rule: all of it lost), the second
    did (its start-up before the first step is restart overhead). 721: the first run
    was restored from a step past its last step event (the trigger's checkpoint): no
    work lost, only the detection."""
    lines = [row(720, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 310),
             row(720, 1, "COMPLETED", T0 + 310, T0 + 310, T0 + 330, T0 + 630),
             row(721, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 310),
             row(721, 1, "COMPLETED", T0 + 310, T0 + 310, T0 + 320, T0 + 620)]
    jobs = {}
    trainer_events(jobs, 720, 1, steps=every_10_s(1, 29, T0 + 345), final=(29, T0 + 626, 0))
    trainer_events(jobs, 721, 0, steps=every_10_s(1, 29, T0 + 20))
    trainer_events(jobs, 721, 1, restore=(30, T0 + 322), steps=every_10_s(31, 59, T0 + 330),
                   final=(59, T0 + 615, 0))
    _, result = built(lines, jobs)
    first = job(result, 720)
    assert buckets_of(first) == {"initial_queue": 10, "lost_work": 300,
                                 "queue_after_requeue": 20, "restart_overhead": 15}
    assert first["productive_s"] == 285 and first["evidence"] == "events"
    second = job(result, 721)
    assert buckets_of(second) == {"initial_queue": 10, "failure_detection": 10,
                                  "queue_after_requeue": 10, "restart_overhead": 10}
    assert second["productive_s"] == 580 and second["lost_steps"] == 0


def test_the_last_run_is_lost_work_only_when_it_was_interrupted():
    """730's only run died (NODE_FAIL, not requeued): the work since its first step is
    lost, the time after its last step is detection. 731's ended FAILED: the job is
    over, nothing is redone, nothing is badput but the queue."""
    lines = [row(730, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 400),
             row(731, 0, "FAILED", T0, T0, T0 + 10, T0 + 400)]
    jobs = {}
    for job_id in (730, 731):
        trainer_events(jobs, job_id, 0, steps=every_10_s(1, 30, T0 + 20))
    _, result = built(lines, jobs)
    assert buckets_of(job(result, 730)) == {"initial_queue": 10, "lost_work": 290,
                                            "failure_detection": 90}
    assert job(result, 730)["lost_steps"] == 0  # nothing resumed: no step counted twice
    assert buckets_of(job(result, 731)) == {"initial_queue": 10}


def test_restarts_inside_the_allocation_exactly():
    """750 (--no-kill) restarts twice in one run: after losing c2 (steps 26-29 done
    again from the checkpoint of step 25), and after a rank crash right at a checkpoint
    (nothing lost; each figure under a second). Each restart's figures are rounded to
    0.1 s; the buckets are their sums."""
    lines = [row(750, 0, "COMPLETED", T0, T0, T0 + 10, T0 + 1000)]
    jobs = {}
    trainer_events(
        jobs, 750, 0,
        steps=every_10_s(1, 29, T0 + 20) + every_10_s(26, 60, T0 + 310)
        + every_10_s(61, 93, T0 + 660),
        final=(93, T0 + 995, 0.5),
        restarts=[{"fault_epoch_s": T0 + 300.27, "detected_epoch_s": T0 + 302.46,
                   "resumed_epoch_s": T0 + 306.5, "checkpoint_step": 25, "dead_nodes": ["c2"],
                   "spare_used": None, "attempt": 1},
                  {"fault_epoch_s": T0 + 650.3, "detected_epoch_s": T0 + 650.7,
                   "resumed_epoch_s": T0 + 651.3, "checkpoint_step": 60, "dead_nodes": [],
                   "spare_used": None, "attempt": 2}])
    _, result = built(lines, jobs)
    chain = job(result, 750)
    assert chain["run_details"][0]["inplace_restarts"] == [
        {"attempt": 1, "dead_nodes": ["c2"], "spare_used": None, "fault_epoch_s": T0 + 300.27,
         "failure_detection_s": 2.2, "restart_overhead_s": 4.0, "lost_work_s": 40.3,
         "lost_steps": 4, "resumed": True},
        {"attempt": 2, "dead_nodes": [], "spare_used": None, "fault_epoch_s": T0 + 650.3,
         "failure_detection_s": 0.4, "restart_overhead_s": 0.6, "lost_work_s": 0.3,
         "lost_steps": 0, "resumed": True}]
    assert buckets_of(chain) == {"initial_queue": 10, "failure_detection": 2.6,
                                 "restart_overhead": 4.6, "lost_work": 40.6,
                                 "checkpoint_stall": 0.5}
    assert chain["productive_s"] == 941.7 and chain["ettr"] == 0.9417
    assert chain["lost_steps"] == 4 and chain["inplace_restarts"] == 2
    assert chain["node_failures"] == 1  # the rank crash lost no node


def test_a_restart_before_the_first_step_that_never_resumed():
    lines = [row(751, 0, "FAILED", T0, T0, T0 + 10, T0 + 200)]
    jobs = {}
    trainer_events(jobs, 751, 0, restarts=[{
        "fault_epoch_s": T0 + 15, "detected_epoch_s": T0 + 17, "resumed_epoch_s": None,
        "checkpoint_step": 0, "dead_nodes": ["c3"], "attempt": 1}])
    _, result = built(lines, jobs)
    chain = job(result, 751)
    [item] = chain["run_details"][0]["inplace_restarts"]
    assert item == {"attempt": 1, "dead_nodes": ["c3"], "spare_used": None,
                    "fault_epoch_s": T0 + 15, "failure_detection_s": 2.0,
                    "restart_overhead_s": 183.0, "lost_work_s": 5.0, "lost_steps": 0,
                    "resumed": False}
    assert buckets_of(chain) == {"initial_queue": 10, "failure_detection": 2,
                                 "restart_overhead": 183, "lost_work": 5}
    assert chain["productive_s"] == 0


def test_a_run_that_never_reached_a_step_is_all_restart_overhead():
    """760 and 780 crash, are requeued and restored (step 29), and crash again before
    their first step (760 after an in-allocation restart); the third run completes.
    The second run's whole time is restart overhead, charged once: a run's buckets
    never add up to more than its time."""
    lines, jobs = [], {}
    for job_id, restarts in ((760, [{"fault_epoch_s": T0 + 330, "detected_epoch_s": T0 + 340,
                                     "resumed_epoch_s": None, "checkpoint_step": 29,
                                     "dead_nodes": ["c4"], "attempt": 1}]),
                             (780, [])):
        lines += [row(job_id, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 310),
                  row(job_id, 1, "NODE_FAIL", T0 + 310, T0 + 310, T0 + 320, T0 + 400),
                  row(job_id, 2, "COMPLETED", T0 + 400, T0 + 400, T0 + 410, T0 + 700)]
        trainer_events(jobs, job_id, 0, steps=every_10_s(1, 29, T0 + 20))
        trainer_events(jobs, job_id, 1, restore=(29, T0 + 322), restarts=restarts)
        trainer_events(jobs, job_id, 2, restore=(29, T0 + 412), steps=every_10_s(30, 57, T0 + 420),
                       final=(57, T0 + 695, 0))
    _, result = built(lines, jobs)
    for job_id in (760, 780):
        chain = job(result, job_id)
        assert buckets_of(chain) == {"initial_queue": 10, "queue_after_requeue": 20,
                                     "failure_detection": 10, "restart_overhead": 90}, job_id
        assert chain["productive_s"] == 570 and chain["ettr"] == round(570 / 700, 4)
        assert [run["lost_steps"] for run in chain["run_details"]] == [0, 0, 0]
    assert job(result, 760)["inplace_restarts"] == 1
    assert job(result, 760)["node_failures"] == 3  # two NODE_FAIL runs and c4


def test_events_of_runs_that_sacct_does_not_show_are_not_evidence():
    lines = [row(770, 0, "COMPLETED", T0, T0, T0 + 10, T0 + 100)]
    jobs = {}
    trainer_events(jobs, 770, 5, steps=[(1, T0 + 20)])
    _, result = built(lines, jobs)
    assert job(result, 770)["evidence"] == "sacct"


# ------------------------------------------------------------- times sacct leaves out


def test_unknown_times_fall_back_and_count_to_now():
    """Eligible falls back to Submit, then to Start; a job with no time at all has no
    wallclock; a job with no end that is not running counts to now (its requeued run
    waited all along); a run that ended the second it started lost nothing; a running
    job's GPU-hours run to now."""
    now = T0 + 1000
    lines = [
        row(800, 0, "PENDING", "Unknown", "Unknown", None, None, nodes="None assigned"),
        row(801, 0, "COMPLETED", T0, "Unknown", T0 + 30, T0 + 100),
        row(802, 0, "COMPLETED", "Unknown", "Unknown", T0 + 50, T0 + 100),
        row(803, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 200),
        row(803, 1, "CANCELLED", T0 + 200, T0 + 200, None, None, nodes="None assigned"),
        row(805, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 10, gpus=8),
        row(805, 1, "COMPLETED", T0 + 10, T0 + 10, T0 + 20, T0 + 100, gpus=8),
        row(806, 0, "RUNNING", T0, T0, T0 + 100, None),
        row(807, 0, "CANCELLED", T0, T0, None, T0, nodes="None assigned"),
    ]
    _, result = built(lines, now=now)
    no_times = job(result, 800)
    assert no_times["wallclock_s"] == 0 and no_times["ettr"] is None
    assert buckets_of(no_times) == {} and no_times["eligible_epoch_s"] is None
    assert job(result, 801)["wallclock_s"] == 100 and buckets_of(job(result, 801)) == {
        "initial_queue": 30}
    assert job(result, 802)["wallclock_s"] == 50 and buckets_of(job(result, 802)) == {}
    cancelled = job(result, 803)
    assert cancelled["end_epoch_s"] is None and cancelled["wallclock_s"] == 1000
    assert buckets_of(cancelled) == {"initial_queue": 10, "lost_work": 190,
                                     "queue_after_requeue": 800}
    assert cancelled["gpu_hours"] == round(32 * 190 / 3600, 3)
    instant = job(result, 805)
    assert buckets_of(instant) == {"initial_queue": 10, "queue_after_requeue": 10}
    assert instant["gpu_hours"] == round(8 * 80 / 3600, 3)
    assert [run["gpu_hours"] for run in instant["run_details"]] == [0, round(8 * 80 / 3600, 3)]
    running = job(result, 806)
    assert running["wallclock_s"] == 1000 and running["end_epoch_s"] == now
    assert running["gpu_hours"] == 32 * 900 / 3600 and buckets_of(running) == {
        "initial_queue": 100}
    never = job(result, 807)
    assert never["wallclock_s"] == 0 and never["gpu_hours"] == 0 and never["ettr"] is None
    assert [run["lost_steps"] for run in cancelled["run_details"]] == [None, None]


def test_no_records_is_an_empty_result():
    runs, _ = runs_of([])
    result = engine.compute(runs, now=T0)
    assert len(result) == 0 and list(report.jobs(result)) == []
    assert engine.totals(result, load.Text(np.zeros(0, np.int32), ["all"]), keep_empty=True) \
        ["all"]["jobs"] == 0


def test_the_preemptor_window_ranks_and_classes_reach_the_engine():
    """A preemptor that starts 200 s after the victim ends is one only with a wider
    window; with ranks, a lower class is not a preemptor; classes name the victim's
    class from its borrowed partition."""
    lines = [row(810, 0, "PREEMPTED", T0, T0, T0 + 10, T0 + 500, qos="normal",
                 partition="borrow-inference"),
             row(810, 1, "COMPLETED", T0 + 500, T0 + 500, T0 + 800, T0 + 900, qos="normal",
                 partition="borrow-inference"),
             row(811, 0, "COMPLETED", T0 + 650, T0 + 650, T0 + 700, T0 + 760, nodes="c1",
                 qos="training", partition="borrow-training")]
    _, result = built(lines)
    assert job(result, 810)["preemptions"] == 0 and job(result, 810)["spurious_requeues"] == 1
    summary, result = built(lines, window_s=300, classes=("training", "inference"))
    assert job(result, 810)["preemptions"] == 1 and job(result, 810)["class"] == "inference"
    assert summary["preemptions"][0]["victim_class"] == "inference"
    _, result = built(lines, window_s=300, ranks={"training": 1, "inference": 2})
    assert job(result, 810)["preemptions"] == 0


def test_restarts_inside_the_allocation_add_up_over_runs():
    lines = [row(820, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 300),
             row(820, 1, "COMPLETED", T0 + 300, T0 + 300, T0 + 310, T0 + 600)]
    jobs = {}
    for run, (begin, fault) in enumerate(((T0 + 10, T0 + 100), (T0 + 310, T0 + 400))):
        trainer_events(jobs, 820, run, steps=every_10_s(1, 5, begin + 10), restarts=[{
            "fault_epoch_s": fault, "detected_epoch_s": fault + 2, "resumed_epoch_s": fault + 5,
            "checkpoint_step": 5, "dead_nodes": [f"c{run + 1}"], "attempt": 1}])
    _, result = built(lines, jobs)
    chain = job(result, 820)
    assert chain["inplace_restarts"] == 2 and chain["node_failures"] == 1 + 2
    for key in ("runs", "requeues", "node_failures", "preemptions", "spurious_requeues",
                "inplace_restarts", "resizes", "gpus", "nodes"):
        assert type(chain[key]) is int, key


def test_the_node_failure_table_exactly():
    """Nodes by blamed failures plus in-place restarts, then NODE_FAIL runs, then name;
    zero-padded names kept, node lists that are not one range expanded."""
    lines = [row(900, 0, "NODE_FAIL", T0, T0, T0, T0 + 100, nodes="gpu[001-003]", nnodes=3),
             row(900, 1, "COMPLETED", T0 + 100, T0 + 100, T0 + 110, T0 + 190,
                 nodes="gpu[001-003]", nnodes=3),
             row(901, 0, "NODE_FAIL", T0, T0, T0 + 200, T0 + 300, nodes="gpu[002,005]",
                 nnodes=2),
             row(902, 0, "NODE_FAIL", T0, T0, T0 + 400, T0 + 500, nodes="gpu[010-011]",
                 nnodes=2),
             row(904, 0, "NODE_FAIL", T0, T0, T0 + 400, T0 + 500, nodes="gpu012", nnodes=1),
             row(903, 0, "COMPLETED", T0, T0, T0 + 10, T0 + 600, nodes="gpu[006-009]")]
    jobs = {}
    trainer_events(jobs, 903, 0, steps=every_10_s(1, 5, T0 + 20), restarts=[{
        "fault_epoch_s": T0 + 100, "detected_epoch_s": T0 + 102, "resumed_epoch_s": T0 + 105,
        "checkpoint_step": 5, "dead_nodes": ["gpu007"], "attempt": 1}])
    summary, _ = built(lines, jobs, node_events={"gpu002": [T0 + 100], "gpu005": [T0 + 300]})

    def entry(node, runs, blamed=0, inplace=0):
        return {"node": node, "node_fail_runs": runs, "blamed_failures": blamed,
                "inplace_restarts": inplace}

    assert summary["node_failures"] == [
        entry("gpu002", 2, blamed=1), entry("gpu005", 1, blamed=1),
        entry("gpu007", 0, inplace=1), entry("gpu001", 1), entry("gpu003", 1),
        entry("gpu010", 1), entry("gpu011", 1), entry("gpu012", 1)]


def test_totals_per_queue_by_hand():
    """team-a: job 1 (8 GPUs, 100 s queued, 900 s of work) and job 2 (32 GPUs, 500 s
    lost to a node failure, 100 s requeued, 400 s of work); team-b: job 3 (2 GPUs,
    running, 50 s queued); team-c has no jobs (listed only with keep_empty)."""
    now = T0 + 1000
    lines = [row(1, 0, "COMPLETED", T0, T0, T0 + 100, T0 + 1000, gpus=8, nodes="c1", nnodes=1),
             row(2, 0, "NODE_FAIL", T0, T0, T0, T0 + 500, gpus=32, nodes="c[2-5]"),
             row(2, 1, "COMPLETED", T0 + 500, T0 + 500, T0 + 600, T0 + 1000, gpus=32,
                 nodes="c[2-5]"),
             row(3, 0, "RUNNING", T0 + 150, T0 + 150, T0 + 200, None, gpus=2, nodes="c6",
                 nnodes=1, account="team-b", qos="inference", partition="guar-team-b")]
    runs, _ = runs_of(lines)
    result = engine.compute(runs, now=now)
    account = load.Text(runs.account.codes[result.r_last[result.c_last]],
                        runs.account.values + ["team-c"])
    zero = dict.fromkeys(engine.BUCKETS, 0.0)
    h = lambda seconds: round(seconds / 3600, 3)  # noqa: E731
    expected = {
        "team-a": {"jobs": 2, "runs": 3, "requeues": 1, "node_failures": 1, "preemptions": 0,
                   "spurious_requeues": 0, "inplace_restarts": 0, "resizes": 0,
                   "ettr": (900 + 400) / 2000,
                   "gpu_weighted_ettr": (8 * 900 + 32 * 400) / (8 * 1000 + 32 * 1000),
                   "wallclock_h": h(2000), "productive_h": h(1300),
                   "gpu_hours": h(8 * 900 + 32 * 500 + 32 * 400),
                   "gpu_wallclock_hours": h(8 * 1000 + 32 * 1000),
                   "productive_gpu_hours": h(8 * 900 + 32 * 400),
                   "badput_h": {**zero, "initial_queue": h(100), "queue_after_requeue": h(100),
                                "lost_work": h(500)},
                   "badput_gpu_hours": {**zero, "initial_queue": h(8 * 100),
                                        "queue_after_requeue": h(32 * 100),
                                        "lost_work": h(32 * 500)}},
        "team-b": {"jobs": 1, "runs": 1, "requeues": 0, "node_failures": 0, "preemptions": 0,
                   "spurious_requeues": 0, "inplace_restarts": 0, "resizes": 0,
                   "ettr": round(800 / 850, 4), "gpu_weighted_ettr": round(800 / 850, 4),
                   "wallclock_h": h(850), "productive_h": h(800), "gpu_hours": h(2 * 800),
                   "gpu_wallclock_hours": h(2 * 850), "productive_gpu_hours": h(2 * 800),
                   "badput_h": {**zero, "initial_queue": h(50)},
                   "badput_gpu_hours": {**zero, "initial_queue": h(2 * 50)}}}
    assert engine.totals(result, account) == expected
    empty = engine.totals(result, account, keep_empty=True)["team-c"]
    assert empty["jobs"] == 0 and empty["ettr"] is None and empty["gpu_weighted_ettr"] is None
    assert empty["gpu_hours"] == 0 and empty["badput_h"] == zero


def test_preemption_cost_by_hand():
    """Per (preemptor queue and class, victim queue and class): the preemptions and the
    victims' GPU-hours lost, run time lost plus the wait until the victim ran again."""
    guaranteed = dict(qos="inference", partition="guar-team-b", account="team-b")
    lines = [
        row(10, 0, "PREEMPTED", T0, T0, T0 + 10, T0 + 500, gpus=24, nodes="c[1-3]", nnodes=3),
        row(10, 1, "COMPLETED", T0 + 500, T0 + 500, T0 + 560, T0 + 900, gpus=24,
            nodes="c[1-3]", nnodes=3),
        row(11, 0, "PREEMPTED", T0, T0, T0 + 100, T0 + 400, gpus=8, nodes="c9", nnodes=1),
        row(12, 0, "PREEMPTED", T0, T0, T0 + 100, T0 + 200, gpus=8, nodes="c10", nnodes=1),
        row(12, 1, "COMPLETED", T0 + 200, T0 + 200, T0 + 260, T0 + 300, gpus=8, nodes="c10",
            nnodes=1),
        row(20, 0, "COMPLETED", T0, T0, T0 + 502, T0 + 550, gpus=8, nodes="c2", nnodes=1,
            **guaranteed),
        row(21, 0, "COMPLETED", T0, T0, T0 + 405, T0 + 450, gpus=8, nodes="c9", nnodes=1,
            qos="inference", partition="guar-team-c", account="team-c"),
        row(22, 0, "COMPLETED", T0, T0, T0 + 203, T0 + 250, gpus=8, nodes="c10", nnodes=1,
            **guaranteed)]
    summary, _ = built(lines)
    assert summary["preemptions"] == [
        {"preemptor_queue": "team-b", "preemptor_class": "inference", "victim_queue": "team-a",
         "victim_class": "training", "preemptions": 2,
         "gpu_hours_lost": round((24 * (490 + 60) + 8 * (100 + 60)) / 3600, 3)},
        {"preemptor_queue": "team-c", "preemptor_class": "inference", "victim_queue": "team-a",
         "victim_class": "training", "preemptions": 1, "gpu_hours_lost": round(8 * 300 / 3600, 3)}]
    summary, _ = built(lines[:2])
    assert summary["preemptions"] == []


def test_each_job_gets_the_class_of_its_qos_and_partition():
    classes = ("training", "inference")
    pairs = [("normal", "guar-a", "normal"), ("normal", "borrow-training", "training"),
             ("normal", "borrow-inference", "inference"), ("training", "guar-a", "training"),
             ("inference", "borrow-training", "inference")]
    lines = [row(30 + index, 0, "COMPLETED", T0, T0, T0 + 10, T0 + 20, qos=qos,
                 partition=partition) for index, (qos, partition, _) in enumerate(pairs)]
    _, result = built(lines, classes=classes)
    assert [job(result, 30 + index)["class"] for index in range(len(pairs))] == \
        [expected for _, _, expected in pairs]


def test_a_pending_record_superseded_by_the_next_of_its_job_is_dropped_and_counted():
    """Only the same job shown the same way supersedes: an array's pending remainder
    (JobIDRaw of its first task, shown 12_[1-3]) is not superseded by the task 12_0.
    (The loader orders records by job.)"""
    lines = [row(12, 0, "COMPLETED", T0, T0, T0 + 10, T0 + 20, display="12_0"),
             row(13, 0, "PENDING", T0, T0, None, None, nodes="None assigned"),
             row(13, 0, "COMPLETED", T0, T0, T0 + 10, T0 + 20),
             row(12, 0, "PENDING", T0, T0, None, None, nodes="None assigned",
                 display="12_[1-3]")]
    runs, _ = runs_of(lines)
    stats = load.IngestStats()
    stats.superseded = 2  # counted before, elsewhere: added to
    kept = engine.drop_superseded(runs, stats)
    assert stats.superseded == 3
    assert [(int(kept.job_id[i]), kept.display[i], kept.state[i]) for i in range(len(kept))] \
        == [(12, "12_0", "COMPLETED"), (12, "12_[1-3]", "PENDING"), (13, "", "COMPLETED")]


def test_the_cluster_node_count_counts_each_node_once():
    lines = [_job(1, "c[0-3]", T0), _job(2, "c[2-5]", T0), _job(3, "gpu[01-02]", T0),
             _job(4, "c[7,9]", T0), _job(5, "x1", T0), _job(6, "c[9-10]", T0),
             _job(7, "None assigned", T0, state="PENDING")]
    runs, _ = runs_of(lines)
    # c0-c5, c7, c9, c10, gpu01, gpu02, x1
    assert engine.cluster_node_count(runs) == 12


@pytest.mark.parametrize("node_lists, count", [
    (["a[1,3]"], 2),                       # a list without a range
    (["c[10-11]", "c[10,12]"], 3),         # a range not from 0, and a list overlapping it
    (["c[3-4]", "c[3,9]"], 3),
    (["n1[0-3]", "n1[2,7]"], 5),           # a prefix ending in a digit: n10-n13, n17
    (["gp[1-2]", "gpu[1,2]"], 4),          # a range's prefix that begins another name
    (["c[00-01]", "c[0-1]"], 4),           # zero padding makes other host names
    (["c[8-12]", "c[08-12]"], 7),          # ...up to its width: c10-c12 are the same hosts
    (["c[098-101]", "c[99-100]"], 5),      # c098 c099 c100 c101, and c99
    (["c[00-01]", "c[0,00]"], 3),          # a list: c0 is new, c00 is held by the range
    (["c[0-1]", "c[00,1]"], 3),
    (["1-007", "1-007,x1"], 2),            # a '-' outside brackets is part of the name
])
def test_the_cluster_node_count_of_overlapping_ranges_and_lists(node_lists, count):
    runs, _ = runs_of([_job(job, nodes, T0) for job, nodes in enumerate(node_lists, 1)])
    assert engine.cluster_node_count(runs) == count


def test_node_failures_on_many_prefixes_and_node_zero():
    lines = [row(60 + index, 0, "NODE_FAIL", T0, T0, T0, T0 + 100, nodes=nodes, nnodes=1)
             for index, nodes in enumerate(["a1", "b1", "c1", "d1", "e2", "n[0-1]"])]
    summary, _ = built(lines)
    assert {row["node"]: row["node_fail_runs"] for row in summary["node_failures"]} == {
        "a1": 1, "b1": 1, "c1": 1, "d1": 1, "e2": 1, "n0": 1, "n1": 1}


def test_totals_leave_cpu_jobs_out_of_gpu_figures_and_keep_every_group():
    now = T0
    lines = [row(1, 0, "COMPLETED", T0 - 43200, T0 - 43200, T0 - 36000, T0, gpus=2, nodes="c1",
                 nnodes=1, account="team-x"),
             row(2, 0, "COMPLETED", T0 - 1000, T0 - 1000, T0 - 900, T0, gpus=0, nodes="c2",
                 nnodes=1, account="team-x"),
             row(3, 0, "COMPLETED", T0 - 100, T0 - 100, T0 - 100, T0, gpus=1, nodes="c3",
                 nnodes=1, account="team-z")]
    runs, _ = runs_of(lines)
    result = engine.compute(runs, now=now)
    codes = runs.account.codes[result.r_last[result.c_last]]
    names = runs.account.values
    # An empty group between the two: "team-y".
    groups = load.Text(np.array([0 if names[c] == "team-x" else 2 for c in codes], np.int32),
                       ["team-x", "team-y", "team-z"])
    totals = engine.totals(result, groups)
    assert list(totals) == ["team-x", "team-z"]
    team = totals["team-x"]
    # Job 1: 12 h wall, 10 h of work; job 2 (no GPUs): 1000 s wall, 900 s of work.
    assert team["productive_h"] == round((36000 + 900) / 3600, 3)
    assert team["badput_h"]["initial_queue"] == round((7200 + 100) / 3600, 3)
    assert team["gpu_wallclock_hours"] == 24.0 and team["productive_gpu_hours"] == 20.0
    assert team["gpu_weighted_ettr"] == round(36000 / 43200, 4)
    assert team["ettr"] == round(36900 / 44200, 4)
    assert totals["team-z"]["jobs"] == 1
    assert list(engine.totals(result, groups, keep_empty=True)) == ["team-x", "team-y", "team-z"]


def test_preemption_cost_names_each_side_from_its_own_record():
    """The preemptor (job 5, the first record) is a borrowed inference job under QOS
    normal; the victim (job 90, the last) waited 40 s before its first run and 70 s
    after the preemption: only the wait after it counts."""
    lines = [row(5, 0, "COMPLETED", T0, T0, T0 + 503, T0 + 600, gpus=8, nodes="c1", nnodes=1,
                 qos="normal", partition="borrow-inference", account="team-q"),
             row(90, 0, "PREEMPTED", T0 - 40, T0 - 40, T0, T0 + 500, gpus=16, nodes="c[1-2]",
                 nnodes=2, qos="training", partition="borrow-training", account="team-v"),
             row(90, 1, "COMPLETED", T0 + 500, T0 + 500, T0 + 570, T0 + 900, gpus=16,
                 nodes="c[1-2]", nnodes=2, qos="training", partition="borrow-training",
                 account="team-v")]
    summary, _ = built(lines, classes=("training", "inference"), now=T0 + 1000)
    assert summary["preemptions"] == [
        {"preemptor_queue": "team-q", "preemptor_class": "inference", "victim_queue": "team-v",
         "victim_class": "training", "preemptions": 1,
         "gpu_hours_lost": round(16 * (500 + 70) / 3600, 3)}]


def test_utilisation_rounds_to_four_places_and_never_shows_negative_idle():
    lines = [row(1, 0, "COMPLETED", T0, T0, T0 + 50, T0 + 250, gpus=8),
             row(2, 0, "COMPLETED", T0, T0, T0, T0 + 100, gpus=4, qos="inference")]
    runs, _ = runs_of(lines)
    result = engine.compute(runs, now=T0 + 400)
    assert engine.utilisation(result, 7, T0, T0 + 400, bins=4) == {
        "start_epoch_s": T0, "bin_s": 100.0, "capacity_gpus": 7,
        "classes": {"training": [round(400 / 700, 4), round(800 / 700, 4), round(400 / 700, 4),
                                 0.0],
                    "inference": [round(400 / 700, 4), 0.0, 0.0, 0.0]},
        "idle": [0.0, 0.0, round(1 - 400 / 700, 4), 1.0]}


def test_steps_lost_add_up_inside_a_run_and_at_its_requeue():
    """Run 0 loses steps 6-9 to a restart inside the allocation, does them again, dies at
    step 9 and is resumed from step 7: steps 8-9 are lost a second time."""
    lines = [row(830, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 300),
             row(830, 1, "COMPLETED", T0 + 300, T0 + 300, T0 + 310, T0 + 600)]
    jobs = {}
    trainer_events(jobs, 830, 0, steps=every_10_s(1, 9, T0 + 20) + every_10_s(6, 9, T0 + 120),
                   restarts=[{"fault_epoch_s": T0 + 105, "detected_epoch_s": T0 + 107,
                              "resumed_epoch_s": T0 + 110, "checkpoint_step": 5,
                              "dead_nodes": ["c2"], "attempt": 1}])
    trainer_events(jobs, 830, 1, restore=(7, T0 + 312), steps=every_10_s(8, 30, T0 + 320),
                   final=(30, T0 + 595, 0))
    _, result = built(lines, jobs)
    assert [run["lost_steps"] for run in job(result, 830)["run_details"]] == [4 + 2, 0]


def test_only_the_first_run_that_finished_the_work_makes_the_rest_other():
    """840: the work is done in run 0 (final checkpoint; a job started on its nodes, but
    the preemption is spurious), then run 1 is a spurious requeue (no preemptor) and run
    2 a no-op. 841: the same, but run 1, which wrote the final checkpoint again, was
    really preempted: a preemption, though its time, as all after the work, is
    ``other``."""
    lines, jobs = [], {}
    for job_id, nodes, with_preemptor in ((840, "c[1-2]", False), (841, "c[5-6]", True)):
        lines += [row(job_id, 0, "PREEMPTED", T0, T0, T0 + 10, T0 + 300, nodes=nodes),
                  row(job_id, 1, "PREEMPTED", T0 + 300, T0 + 300, T0 + 320, T0 + 400,
                      nodes=nodes),
                  row(job_id, 2, "COMPLETED", T0 + 400, T0 + 400, T0 + 430, T0 + 450,
                      nodes=nodes)]
        trainer_events(jobs, job_id, 0, steps=every_10_s(1, 28, T0 + 20),
                       final=(28, T0 + 295, 0))
        trainer_events(jobs, job_id, 1, restore=(28, T0 + 322),
                       final=(28, T0 + 330, 0) if with_preemptor else None)
        trainer_events(jobs, job_id, 2, restore=(28, T0 + 432))
    lines += [row(850, 0, "COMPLETED", T0, T0, T0 + 301, T0 + 310, nodes="c[1,5]", nnodes=2,
                  qos="inference", partition="guar-team-a"),
              row(851, 0, "COMPLETED", T0, T0, T0 + 401, T0 + 410, nodes="c5", nnodes=1,
                  qos="inference", partition="guar-team-a")]
    _, result = built(lines, jobs, now=T0 + 1000)
    for job_id in (840, 841):
        chain = job(result, job_id)
        assert buckets_of(chain) == {"initial_queue": 10, "other": 20 + 80 + 30 + 20}, job_id
    assert (job(result, 840)["preemptions"], job(result, 840)["spurious_requeues"]) == (0, 2)
    assert (job(result, 841)["preemptions"], job(result, 841)["spurious_requeues"]) == (1, 1)


def test_a_resize_is_one_run_whatever_record_comes_first():
    lines = [row(1, 1, "COMPLETED", T0, T0, T0 + 10, T0 + 20),  # its run 0 not in the dump
             row(40, 0, "RESIZING", T0, T0, T0 + 10, T0 + 600),
             row(40, 0, "COMPLETED", T0 + 600, T0 + 600, T0 + 600, T0 + 1010,
                 nodes="c[1,3-4]", nnodes=3, gpus=24)]
    _, result = built(lines)
    assert job(result, 40)["runs"] == 1 and job(result, 40)["resizes"] == 1
