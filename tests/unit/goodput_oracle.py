"""A list-based goodput oracle: the documented rules of ``slurmkit.goodput.engine``
(sacct evidence only) written one job and one run at a time, plainly, to hold the
vectorized engine to. Input: dicts with the fields of a sacct record."""

from __future__ import annotations

from itertools import groupby

from slurmkit.slurm import hostlist

INTERRUPTED = {"NODE_FAIL", "PREEMPTED", "REQUEUED", "FAILED", "TIMEOUT", "BOOT_FAIL",
               "OUT_OF_MEMORY", "CANCELLED", "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT"}
ACTIVE = {"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED",
          "RESIZING"}
FINAL = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"}


def nodes(text):
    try:
        return set(hostlist.expand(text))
    except Exception:  # noqa: BLE001
        return set()


def preemptor_found(victim, records, window_s=120):
    for other in records:
        if other["job_id"] == victim["job_id"] or not other["start"]:
            continue
        if victim["end"] - 5 <= other["start"] <= victim["end"] + window_s and \
                nodes(victim["node_list"]) & nodes(other["node_list"]):
            return True
    return False


def jobs(records, now):
    """{(job_id, display): figures} for every job."""
    out = {}
    key = lambda r: (r["job_id"], r["display"])  # noqa: E731
    ordered = sorted(records, key=lambda r: (r["job_id"], r["display"], r["restarts"], r["start"]))
    for job, group in groupby(ordered, key=key):
        group = list(group)
        # Superseded: a never-started record with a later record of the same job.
        group = [r for i, r in enumerate(group) if r["start"] or i == len(group) - 1]
        runs = []
        for record in group:
            if runs and runs[-1][-1]["state"] == "RESIZING" and \
                    runs[-1][-1]["restarts"] == record["restarts"]:
                runs[-1].append(record)
            else:
                runs.append([record])
        eligible = group[0]["eligible"] or group[0]["submit"] or group[0]["start"]
        last = runs[-1]
        if last[-1]["end"]:
            end = last[-1]["end"]
        elif last[-1]["state"] in ACTIVE or last[0]["start"]:
            end = now
        else:
            end = 0
        wallclock = max(0, (end or now) - (eligible or now))
        buckets = dict.fromkeys(("initial_queue", "queue_after_requeue", "lost_work",
                                 "preemption", "other"), 0)
        preemptions = spurious = 0
        finished = False
        previous_end, previous_real = None, False
        marked = [run[-1]["state"] == "PREEMPTED" and bool(run[-1]["end"]) for run in runs]
        found = [marked[i] and preemptor_found(run[-1], records) for i, run in enumerate(runs)]
        unreal = [m and not f for m, f in zip(marked, found, strict=True)]
        # A job that requeued itself when preempted: Slurm's next PREEMPTED is spurious.
        reals = [f or (run[-1]["state"] == "REQUEUED" and i + 1 < len(runs) and unreal[i + 1])
                 for i, (run, f) in enumerate(zip(runs, found, strict=True))]
        for index, run in enumerate(runs):
            state, start = run[-1]["state"], run[0]["start"]
            run_end = run[-1]["end"] or end
            if index == 0:
                if eligible:
                    buckets["initial_queue"] += max(0, (start if start else (end or now)) - eligible)
            elif previous_end:
                wait = max(0, (start or end or now) - previous_end)
                bucket = "other" if finished else "preemption" if previous_real else \
                    "queue_after_requeue"
                buckets[bucket] += wait
            elapsed = max(0, run_end - start) if start and run_end else 0
            real = reals[index]
            preemptions += real
            spurious += unreal[index]
            if finished:
                buckets["other"] += elapsed
            elif unreal[index]:
                pass  # spurious: the run did its work
            elif index < len(runs) - 1 or (state in INTERRUPTED and state not in FINAL):
                buckets["preemption" if real else "lost_work"] += elapsed
            finished = finished or unreal[index]
            previous_end, previous_real = run[-1]["end"], real
        out[job] = {"runs": len(runs), "wallclock": wallclock,
                    "productive": max(0, wallclock - sum(buckets.values())),
                    "buckets": buckets, "preemptions": preemptions, "spurious": spurious,
                    "node_failures": sum(run[-1]["state"] == "NODE_FAIL" for run in runs),
                    "final_state": runs[-1][-1]["state"]}
    return out
