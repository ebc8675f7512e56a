from govlab.bench import BENCHMARKS
from govlab.bench.memorization import bench_memorization


def test_bench_memorization_quick_on_smoke():
    assert BENCHMARKS["memorization"] is bench_memorization
    r = bench_memorization(quick=True, preset="smoke", every=10)
    assert r["overhead_ratio"] == round(r["monitored_step_s"] / r["plain_step_s"], 4) or \
        abs(r["overhead_ratio"] - r["monitored_step_s"] / r["plain_step_s"]) < 0.01
    assert r["training_unchanged"] is True  # the monitor alone does not change training
    assert r["auc"] is None or 0 <= r["auc"] <= 1
    assert r["every"] == 10 and r["steps_trained"] == 20
