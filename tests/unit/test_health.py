"""Node health: blame only the nodes Slurm names, count incidents, find lemons."""

from slurmkit.slurm.models import AccountingRecord
from slurmkit.testing import bigcluster
from slurmkit.topology import health


def run(nodes, start=1000, end=1100, state="NODE_FAIL", failed_node="", job_id=1):
    return AccountingRecord(job_id=job_id, display_id=str(job_id), name="j", user="u",
                            account="a", partition="p", qos="q", state=state,
                            state_flags=(state,), reason="", exit_code=0, exit_signal=None,
                            restarts=0, submit_epoch_s=start, eligible_epoch_s=start,
                            start_epoch_s=start, end_epoch_s=end, elapsed_s=end - start,
                            nodes=tuple(nodes), node_count=len(nodes), failed_node=failed_node)


def events(*lines):
    return health.parse_events("\n".join(lines) + "\n")


def test_events_are_parsed_and_cluster_wide_ones_skipped():
    parsed = events("|1000|Unknown||Cluster Registered TRES", "c2|1090|1095|DOWN*|Not responding",
                    "c3|1|Unknown|DRAIN|admin maintenance", "c4|١٢|13|DOWN|unicode digits")
    assert [(e.node, e.end_epoch_s, e.is_down) for e in parsed] == [
        ("c2", 1095, True), ("c3", None, False)]


def test_a_run_is_blamed_on_the_node_whose_down_event_ended_it():
    report = health.assess([run(["c1", "c2"]), run(["c3"], state="COMPLETED")],
                           events("c2|1090|1095|DOWN*|Not responding",
                                  "c3|1|2|DRAIN|admin maintenance"))
    assert report.failures == {"c2": 1} and report.unattributed_runs == 0


def test_an_earlier_resolved_failure_blames_nothing():
    # c1 went down (and came back) before the run started; c2 went down at its end.
    report = health.assess([run(["c1", "c2"])], events("c1|700|760|DOWN*|Not responding",
                                                       "c2|1100|1130|DOWN*|Not responding"))
    assert report.failures == {"c2": 1}


def test_the_node_sacct_names_as_failed_is_blamed_without_events():
    assert health.node_failures([run(["c1", "c2", "c3"], failed_node="c3")]) == {"c3": 1}


def test_a_run_nobody_is_named_for_blames_no_node_and_is_counted():
    # Before: every node of the run was blamed, so one failed 1,000-node job marked
    # 1,000 nodes unhealthy.
    big = [f"n{i}" for i in range(1000)]
    report = health.assess([run(big), run(["c1", "c2"])])
    assert report.failures == {} and report.lemons == frozenset()
    assert (report.node_fail_runs, report.unattributed_runs) == (2, 2)
    assert health.node_failures([run(["c1", "c2"])]) == {}


def test_jobs_lost_to_one_crash_are_one_incident():
    # The live cluster after one crash of c2: two jobs on it ended NODE_FAIL together.
    crash = events("c2|1796015828|1796015830|DOWN*|Not responding")
    report = health.assess([run(["c1", "c2"], 1796015802, 1796015828, failed_node="c2"),
                            run(["c2"], 1796015803, 1796015828, failed_node="c2", job_id=2)],
                           crash)
    assert report.records["c2"].incidents == 1 and report.records["c2"].runs == 2
    assert report.lemons == frozenset()


def test_a_node_that_failed_once_and_came_back_is_not_a_lemon():
    report = health.assess([run(["c1"], 1000, 1100, failed_node="c1")],
                           events("c1|1100|1200|DOWN*|Not responding"))
    assert report.records["c1"].in_service and report.lemons == frozenset()
    assert health.unhealthy_nodes(report.failures) == frozenset()
    # A stricter threshold is the user's choice.
    assert health.unhealthy_nodes(report.failures, max_failures=1) == {"c1"}


def test_repeated_failures_make_a_lemon():
    report = health.assess([run(["c1"], 1000, 1100, failed_node="c1"),
                            run(["c1"], 5000, 5100, failed_node="c1", job_id=2)])
    assert report.records["c1"].incidents == 2 and report.lemons == {"c1"}
    assert health.assess([run(["c1"], 1000, 1100, failed_node="c1"),
                          run(["c1"], 5000, 5100, failed_node="c1", job_id=2)],
                         min_incidents=3).lemons == frozenset()


def test_a_node_that_failed_and_is_still_down_is_a_lemon():
    still_open = events("c1|1100|Unknown|DOWN*|Not responding")
    assert health.assess([run(["c1"], failed_node="c1")], still_open).lemons == {"c1"}
    closed = events("c1|1100|1200|DOWN*|Not responding")
    assert health.assess([run(["c1"], failed_node="c1")], closed,
                         out_of_service=["c1"]).lemons == {"c1"}


def test_badness_orders_the_worst_first():
    report = health.assess([run(["a"], 1000, 1100, failed_node="a"),
                            run(["a"], 5000, 5100, failed_node="a", job_id=2),
                            run(["b"], 1000, 1100, failed_node="b", job_id=3),
                            run(["b"], 5000, 5100, failed_node="b", job_id=4),
                            run(["b"], 9000, 9100, failed_node="b", job_id=5)])
    assert sorted(["a", "b", "z"], key=report.badness) == ["b", "a", "z"]


def test_12500_nodes_with_a_realistic_day_of_failures():
    cluster = bigcluster.generate()
    out = [node.name for node in cluster.nodes if node.states & health.OUT_OF_SERVICE_STATES]
    report = health.assess(cluster.runs, health.parse_events(cluster.events_text),
                           out_of_service=out)
    assert report.lemons == cluster.lemons
    assert not report.lemons & cluster.failed_once
    assert all(report.records[node].incidents == 1 for node in cluster.failed_once)
    assert report.unattributed_runs == cluster.unattributed_runs
    assert report.node_fail_runs == len(cluster.runs)
    # 1,000-node runs blamed on the one node Slurm named: nobody else's count grew.
    assert sum(len(run.nodes) for run in cluster.runs) >= \
        (cluster.big_runs + cluster.unattributed_runs) * 1000
    assert len(report.records) == len(cluster.lemons) + len(cluster.failed_once)
    # Its speed is bench/cli.py's to measure; a bound here would only test the machine.
