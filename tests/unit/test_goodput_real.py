"""The goodput engine on real Slurm 24.11 accounting of known scenarios."""

from __future__ import annotations

import json

from slurmkit.goodput import load, report


def test_real_24_11_accounting_gives_what_happened(data, tmp_path):
    """Accounting captured from Slurm 24.11 on the docker cluster by
    ``python -m slurmkit.testing.capture`` (scenarios whose truth is known by
    construction, in sacct_real_truth.json): an array with a failed and a requeued
    task, a het job, '|' and non-ASCII names, a --no-kill job shrunk by Slurm, a node
    failure and requeue, a grace-time preemption requeued by Slurm and one whose job
    requeues itself: recorded REQUEUED, then Slurm's spurious PREEMPTED requeue of the
    next run. Both formats give exactly those runs and the same tables."""
    truth = json.loads(data("sacct_real_truth.json"))
    assert truth["preempted_self_requeue"]["states"] == ["PENDING", "PREEMPTED", "COMPLETED"]
    expected = {job: tuple(value) for scenario in truth.values()
                for job, value in scenario["expect"].items()}
    tables = []
    for name in ("sacct_real_parsable2.txt", "sacct_real.json"):
        path = tmp_path / name
        path.write_text(data(name), encoding="utf-8")
        stats = load.IngestStats()
        runs = load.read_input(str(path), stats=stats)
        _, result = report.build(runs, stats=stats)
        got = {j["job_id"]: j for j in report.jobs(result)}
        assert {job: (got[job]["runs"], got[job]["final_state"]) for job in expected} \
            == expected, name
        assert stats.malformed == 0, name
        resize = got[str(truth["resize"]["job"])]
        assert resize["resizes"] == 1 and resize["requeues"] == 0
        nodefail = got[str(truth["nodefail"]["job"])]
        assert nodefail["node_failures"] == 1 and nodefail["requeues"] == 1
        for scenario in ("preempted", "preempted_self_requeue"):  # Slurm's, the job's own
            preempted = got[str(truth[scenario]["job"])]
            assert preempted["preemptions"] == 1, scenario
            assert preempted["spurious_requeues"] == truth[scenario]["spurious"], scenario
            assert preempted["badput_s"]["preemption"] > 0, scenario
        assert got[str(truth["preempted_self_requeue"]["job"])]["badput_s"]["other"] > 0
        for key, job in truth["names"]["jobs"].items():
            assert got[str(job)]["name"] == truth["names"]["names"][key]
        array = truth["array"]["job"]
        assert {got[f"{array}_{task}"]["job_id_raw"] for task in (1, 2, 3)} >= {array}
        tables.append([{k: v for k, v in job.items()} for job in report.jobs(result)])
    assert tables[0] == tables[1]
