"""Goodput: ingest of odd sacct output, metrics with and without checkpoint events,
and every output format."""

import csv
import io
import json

import pytest

from slurmkit.goodput import fast, ingest, metrics, report
from slurmkit.goodput.events import add_event
from slurmkit.goodput.table import from_runs as table_of

COLUMNS = ingest.COLUMNS
T0 = 1_800_000_000


def row(job_id, restarts, state, submit, eligible, start, end, nodes="c[1-4]", nnodes=4,
        gpus=32, name="train", account="team-a", qos="training", partition="borrow-training",
        display=None, exit_code="0:0"):
    elapsed = (end - start) if isinstance(start, int) and isinstance(end, int) else 0
    fields = [str(job_id), display or str(job_id), "bob", account, partition, qos, state,
              str(restarts), str(submit), str(eligible), str(start or "Unknown"),
              str(end or "Unknown"), str(elapsed), str(nnodes), nodes,
              f"billing={gpus},cpu=8,gres/gpu={gpus},mem=8000M,node={nnodes}", exit_code, name]
    return "|".join(fields)


# A training job: run 0 crashes (NODE_FAIL), run 1 is preempted, run 2 completes.
CHAIN = [
    row(100, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 310),
    row(100, 1, "PREEMPTED", T0 + 310, T0 + 341, T0 + 345, T0 + 645, nodes="c[1-3]", nnodes=3,
        gpus=24),
    row(100, 2, "COMPLETED", T0 + 645, T0 + 676, T0 + 700, T0 + 1000, nodes="c[1-3]", nnodes=3,
        gpus=24),
]


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
    # Preempted: the triggered checkpoint was of step 55, two steps were lost.
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
    for job in jobs.values():
        for run in job.runs.values():
            run.steps.sort()
    return jobs


def runs_of(lines):
    stats = ingest.IngestStats()
    return list(ingest.parse_parsable2(lines, COLUMNS, stats=stats)), stats


def test_chain_with_events_splits_the_badput_exactly():
    runs, _ = runs_of(CHAIN)
    [chain] = metrics.group_chains(runs).values()
    result = metrics.chain_metrics(chain, chain_events()[100], now=T0 + 2000)
    buckets = result.buckets
    assert result.wallclock_s == 1000 and len(result.runs) == 3
    assert buckets["initial_queue"] == 10
    assert buckets["queue_after_requeue"] == 35  # T0+310 -> T0+345, after the crash
    # The wait after the preemption, and the time from step 55 (kept, T0+605) to the
    # preemption (T0+645): two lost steps and the rest of the grace period.
    assert buckets["preemption"] == 55 + 40
    assert buckets["lost_work"] == 10  # crash at T0+310, step 29 done at T0+300
    assert buckets["restart_overhead"] == 10 + 10  # run 1: 345 -> 355; run 2: 700 -> 710
    assert buckets["checkpoint_stall"] == pytest.approx(0.7)
    assert result.productive_s == pytest.approx(1000 - sum(buckets.values()))
    assert [r.lost_steps for r in result.runs] == [0, 2, None]
    assert result.lost_steps == 2 and result.node_failures == 1 and result.preemptions == 1
    assert result.evidence == "events"


def test_without_events_interrupted_runs_count_as_lost():
    runs, _ = runs_of(CHAIN)
    [chain] = metrics.group_chains(runs).values()
    result = metrics.chain_metrics(chain, None, now=T0 + 2000)
    assert result.buckets["lost_work"] == 300 and result.buckets["preemption"] == 300 + 55
    assert result.evidence == "sacct" and result.lost_steps is None


def test_spurious_preemption_after_grace_is_not_a_preemption():
    lines = CHAIN[:2] + [
        row(100, 2, "PREEMPTED", T0 + 645, T0 + 676, T0 + 700, T0 + 1000, nodes="c[1-3]",
            nnodes=3, gpus=24),
        row(100, 3, "COMPLETED", T0 + 1000, T0 + 1031, T0 + 1040, T0 + 1045, nodes="c[1-3]",
            nnodes=3, gpus=24),
    ]
    runs, _ = runs_of(lines)
    [chain] = metrics.group_chains(runs).values()
    result = metrics.chain_metrics(chain, chain_events()[100], now=T0 + 2000)
    assert result.runs[2].spurious_preemption and result.preemptions == 1
    assert result.buckets["other"] == 40 + 5  # the extra wait and run


HOSTILE = [
    "garbage line without separators",
    row(200, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61, name="a|b|c", gpus=8, nnodes=1, nodes="c1"),
    row(201, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61, name="multi\nline|x", gpus=8, nnodes=1,
        nodes="c2"),
    row(202, 0, "WEIRD_NEW_STATE", T0, T0, T0 + 1, T0 + 61, name="<script>alert(1)</script> $x$",
        gpus=8, nnodes=1, nodes="c3"),
    row(203, 0, "CANCELLED by 2001", T0, T0, None, None, name="ünï⚡", gpus=0, nodes="None assigned",
        nnodes=0),
    "203.batch|203.batch||team-a|||COMPLETED||0|0|0|0|0|0|1|c1||0:0|batch",
    row(204, 0, "COMPLETED", "2026-11-28T07:00:00", "2026-11-28T07:00:00", "2026-11-28T07:00:05",
        "bogus-time", name="=cmd|' /C calc'!A0", gpus=8, nnodes=1, nodes="c4"),
]


def test_hostile_and_odd_sacct_content_is_counted_not_fatal():
    truncated = HOSTILE + [row(205, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61)[:25]]
    runs, stats = runs_of(truncated)
    names = {run.job_id: run.name for run in runs}
    assert names[200] == "a|b|c" and names[201] == "multi\nline|x"
    assert stats.unknown_states == {"WEIRD_NEW_STATE": 1}
    assert stats.steps_skipped == 1 and stats.malformed >= 1 and stats.truncated
    assert stats.bad_times == 1
    built = report.build_report(runs, stats=stats, now=T0 + 100, capacity_gpus=32)
    for formatter in (report.format_table, report.format_json, report.format_csv,
                      report.format_html):
        text = formatter(built)
        assert text
    table = report.format_table(built)
    assert "1 runs in unknown state WEIRD_NEW_STATE" in table
    assert "the input ended in the middle of a row" in table
    html = report.format_html(built)
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    rows = list(csv.DictReader(io.StringIO(report.format_csv(built))))
    by_id = {r["job_id"]: r for r in rows}
    assert by_id["201"]["name"] == "multi\nline|x"
    assert by_id["204"]["name"].startswith("'=")  # no spreadsheet formula


def test_json_report_lists_every_chain_and_the_totals():
    runs, stats = runs_of(CHAIN + HOSTILE[1:4])
    built = report.build_report(runs, events=chain_events(), stats=stats, now=T0 + 2000,
                                classes=("training", "inference"), capacity_gpus=32)
    payload = json.loads(report.format_json(built))
    jobs = {job["job_id"]: job for job in payload["jobs"]}
    assert set(jobs) == {100, 200, 201, 202}
    required = {"job_id", "name", "user", "account", "runs", "final_state", "node_failures",
                "preemptions", "ettr"}
    assert all(required <= set(job) for job in jobs.values())
    assert jobs[100]["runs"] == 3 and jobs[100]["node_failures"] == 1
    assert jobs[100]["preemptions"] == 1 and jobs[100]["lost_steps"] == 2
    assert set(payload["queues"]) == {"team-a"} and "training" in payload["classes"]
    assert payload["totals"]["jobs"] == 4 and payload["utilisation"]["capacity_gpus"] == 32


def test_node_failure_table_blames_with_node_events():
    runs, _ = runs_of(CHAIN)
    # c2 went down as the run ended; c3's DOWN event is an earlier failure, resumed
    # before this run started (it must not be blamed for this one).
    node_events = {"c2": [T0 + 300], "c3": [T0 - 60]}
    table = metrics.node_failure_table(runs, node_events)
    assert table[0]["node"] == "c2" and table[0]["blamed_failures"] == 1
    assert {row["node"] for row in table} == {"c1", "c2", "c3", "c4"}
    assert all(row["blamed_failures"] == 0 for row in table[1:])
    vectorized = fast.node_failure_table(table_of(runs), node_events)
    assert sorted(map(str, vectorized)) == sorted(map(str, table))


def test_preemption_is_attributed_to_the_job_that_took_the_nodes():
    lines = CHAIN + [row(300, 0, "COMPLETED", T0 + 600, T0 + 600, T0 + 646, T0 + 700,
                         nodes="c1", nnodes=1, gpus=8, account="team-a", qos="inference",
                         partition="guar-team-a", name="serve")]
    runs, _ = runs_of(lines)
    chains = {job: metrics.chain_metrics(chain, chain_events().get(job), now=T0 + 2000)
              for job, chain in metrics.group_chains(runs).items()}
    [attribution] = metrics.preemption_attribution(runs, chains)
    assert attribution["preemptor_class"] == "inference"
    assert attribution["victim_class"] == "training" and attribution["preemptions"] == 1
    assert attribution["gpu_hours_lost"] == pytest.approx(24 * (40 + 55) / 3600, abs=1e-3)


def test_expected_ettr_and_optimal_interval():
    runs, _ = runs_of(CHAIN)
    [chain] = metrics.group_chains(runs).values()
    result = metrics.chain_metrics(chain, chain_events()[100], now=T0 + 2000)
    row_ = metrics.expected_ettr(result, failures_per_node_day=6.5 / 1000, restart_s=60,
                                 interval_s=600, write_s=3.0)
    assert 0 < row_["expected_ettr"] < 1 and row_["optimal_interval_s"] > 0


def test_json_dump_ingest(data):
    stats = ingest.IngestStats()
    runs = list(ingest.parse_json(data("sacct_D.json"), stats=stats))
    assert {run.job_id for run in runs} >= {3, 5, 6} and stats.runs == len(runs)
    with pytest.raises(Exception, match="truncated"):
        list(ingest.parse_json(data("sacct_D.json")[:500], stats=ingest.IngestStats()))


def test_header_must_name_the_required_columns():
    with pytest.raises(Exception, match="missing columns"):
        list(ingest.parse_parsable2(["JobID|Name", "1|x"]))


def test_the_vectorized_parser_agrees_with_the_row_parser(tmp_path):
    """The byte-level parser (big dumps) and the row parser read hostile input alike."""
    from slurmkit.goodput import table

    lines = ["garbage first line"] + CHAIN + HOSTILE[1:] + [
        row(206, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61, nodes="c[1-2,5]", nnodes=3),
        row(207, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61, nodes="gpu0042", nnodes=1),
        row(208, 0, "RUNNING", T0, T0, T0 + 1, "Unknown", nodes="x[7]", nnodes=1),
        row(209, 0, "COMPLETED", T0, T0, T0 + 1, T0 + 61)[:40]]
    dump = tmp_path / "dump.txt"
    dump.write_text("|".join(COLUMNS) + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    vector_stats, row_stats = ingest.IngestStats(), ingest.IngestStats()
    data = dump.read_bytes().split(b"\n", 1)[1]
    vectorized = table.parse_bytes(data, COLUMNS, vector_stats)
    by_rows = table.from_runs(ingest.parse_parsable2(lines, COLUMNS, stats=row_stats))
    assert len(vectorized) == len(by_rows) > 0
    for index in range(len(by_rows)):
        expected, got = by_rows.run(index), vectorized.run(index)
        # Submit is only read where Eligible is missing (its one use); elapsed is end-start.
        got = got._replace(elapsed_s=expected.elapsed_s,
                           submit=expected.submit if expected.eligible else got.submit)
        assert got == expected, (index, got, expected)
    assert vector_stats.unknown_states == row_stats.unknown_states
    assert vector_stats.steps_skipped == row_stats.steps_skipped == 1
    assert vector_stats.truncated and row_stats.truncated
    assert vector_stats.malformed == row_stats.malformed
    # The node ranges the vectorized parser computed match the row parser's.
    prefix, first, last, single = vectorized.node_columns
    for index in range(len(vectorized)):
        ranges = __import__("slurmkit.goodput.nodes", fromlist=["ranges"]).ranges(
            vectorized.node_list[index])
        if single[index]:
            assert len(ranges) == 1 and (ranges[0][1], ranges[0][2]) == (first[index], last[index])
        else:
            assert len(ranges) != 1 or ranges[0][1] < 0


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_STATES = ["COMPLETED", "NODE_FAIL", "PREEMPTED", "REQUEUED", "FAILED", "CANCELLED",
           "RUNNING", "PENDING", "TIMEOUT"]


@st.composite
def chains_(draw):
    lines = []
    for job in range(draw(st.integers(1, 6))):
        clock = T0 + draw(st.integers(0, 1000))
        runs = draw(st.integers(1, 4))
        for restart in range(runs):
            state = draw(st.sampled_from(_STATES))
            eligible = clock + draw(st.integers(0, 40))
            started = draw(st.booleans()) or state not in ("PENDING",)
            start = eligible + draw(st.integers(0, 100)) if started else None
            end = start + draw(st.integers(1, 500)) if start and state not in ("RUNNING",) \
                else None
            lines.append(row(300 + job, restart, state, clock, eligible, start, end,
                             gpus=draw(st.sampled_from([0, 8, 32]))))
            clock = end or eligible
    return lines


@settings(max_examples=300, deadline=None)
@given(chains_())
def test_vectorized_buckets_equal_the_per_job_metrics(lines):
    from slurmkit.goodput import fast, table

    runs, _ = runs_of(lines)
    now = T0 + 100_000
    runs_table = table.from_runs(runs)
    chains = fast.compute_chains(runs_table, now=now)
    per_job = {job: metrics.chain_metrics(chain, None, now=now)
               for job, chain in metrics.group_chains(runs).items()}
    for index in range(len(chains)):
        job = int(runs_table.job_id[chains.first[index]])
        expected = per_job[job]
        assert chains.wallclock[index] == pytest.approx(expected.wallclock_s)
        assert chains.productive[index] == pytest.approx(expected.productive_s)
        for position, name in enumerate(metrics.BUCKETS):
            assert chains.buckets[index, position] == pytest.approx(expected.buckets[name]), name
        assert chains.node_failures[index] == expected.node_failures
        assert chains.preemptions[index] == expected.preemptions


def test_html_without_matplotlib_says_how_to_get_it(monkeypatch):
    import sys

    from slurmkit.errors import SlurmkitError

    runs, _ = runs_of(CHAIN)
    built = report.build_report(runs, now=T0 + 2000, capacity_gpus=32)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.raises(SlurmkitError, match="python3-matplotlib.*--format table, json or csv"):
        report.format_html(built)


def test_a_record_left_pending_by_a_controller_restart_is_not_a_run():
    # Seen in the fault campaign: slurmctld restarted while the requeued job was pending;
    # the job got a new record and the old one stayed PENDING with no start.
    chain = [
        row(300, 0, "NODE_FAIL", T0, T0, T0 + 10, T0 + 80),
        row(300, 1, "PENDING", T0 + 70, T0 + 100, None, None, nodes="None assigned"),
        row(300, 1, "COMPLETED", T0 + 80, T0 + 110, T0 + 112, T0 + 142, nodes="c[2-4]",
            nnodes=3, gpus=24),
    ]
    runs, stats = runs_of(chain)
    built = report.build_report(runs, stats=stats, now=T0 + 200)
    [job] = json.loads(report.format_json(built))["jobs"]
    assert job["runs"] == 2 and [r["state"] for r in job["run_details"]] == \
        ["NODE_FAIL", "COMPLETED"]
    assert job["badput_s"]["queue_after_requeue"] == 112 - 80
    assert built["ingest"]["superseded_records"] == 1
    assert "1 superseded records" in report.format_table(built)
    # A pending job's only record stays: it is the job, waiting.
    runs, stats = runs_of([row(301, 0, "PENDING", T0, T0, None, None, nodes="None assigned")])
    built = report.build_report(runs, stats=stats, now=T0 + 200)
    assert built["ingest"]["superseded_records"] == 0 and built["totals"]["jobs"] == 1
