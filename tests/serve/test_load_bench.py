"""bench/bench_serve.py --load (issue #18): the per-level figures, the lost-feedback count, the
seeded plan and the ratios the decision is read from."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "bench"))

import bench_serve  # noqa: E402


def row(latency, ttft, tokens, **kw):
    return {"latency_s": latency, "ttft_s": ttft, "tokens": tokens, "like_acknowledged": True, **kw}


def test_failed_requests_count_only_as_errors_and_throughput_is_over_the_wall_time():
    rows = [row(1.0, 0.2, 10), row(3.0, 0.4, 30), row(2.0, None, 20), {"error": "AppError: boom"}]
    s = bench_serve.summarize(rows, wall_s=4.0)
    assert (s["requests"], s["answered"], s["errors"]) == (4, 3, 1)
    assert s["error_samples"] == ["AppError: boom"]
    assert s["latency_p50_s"] == 2.0 and s["latency_p95_s"] == 3.0
    assert s["ttft_p50_s"] in (0.2, 0.4) and s["ttft_p95_s"] == 0.4  # the answer without a first token is left out
    assert s["tokens"] == 60 and s["tokens_per_s"] == 15.0  # 60 tokens / 4 s of wall time, not the sum of latencies
    assert s["tokens_per_s_per_user_p50"] == 10.0
    empty = bench_serve.summarize([{"error": "x"}], 1.0)
    assert empty["latency_p50_s"] is None and empty["tokens_per_s_per_user_p50"] is None and empty["errors"] == 1


def test_lost_feedback_is_acknowledged_likes_missing_from_the_database():
    rows = [row(1, 1, 1), row(1, 1, 1), row(1, 1, 1, like_acknowledged=False), {"error": "no answer"}]
    t = bench_serve.feedback_tally(rows, stored_likes=1)
    assert t == {"likes_acknowledged": 2, "likes_stored": 1, "lost_feedback_rows": 1,
                 "stored_without_acknowledgement": 0, "unacknowledged": 1}
    assert bench_serve.feedback_tally(rows, stored_likes=2)["lost_feedback_rows"] == 0
    assert bench_serve.feedback_tally(rows, stored_likes=3)["stored_without_acknowledgement"] == 1


def test_the_plan_is_seeded_and_the_same_for_every_backend():
    a = bench_serve.load_plan(8, 2, seed=0)
    assert a == bench_serve.load_plan(8, 2, seed=0) and len(a) == 8 and all(len(p) == 2 for p in a)
    assert a != bench_serve.load_plan(8, 2, seed=1)
    assert {q for p in a for q in p} <= set(bench_serve.PROMPTS)


def test_the_comparison_reads_the_aims_and_the_decision():
    def level(p50, p95, ttft, tps):
        return {"latency_p50_s": p50, "latency_p95_s": p95, "ttft_p50_s": ttft, "tokens_per_s": tps,
                "errors": 0, "lost_feedback_rows": 0}

    res = {"user_levels": [1, 8], "backends": {
        "vllm": {"levels": {"1": {"app": level(2.0, 2.5, 0.6, 10), "engine_direct": level(1.8, 2.0, 0.5, 12)},
                            "8": {"app": level(3.0, 5.0, 1.2, 40), "engine_direct": level(2.5, 4.0, 1.0, 50)}}},
        "batch": {"levels": {"1": {"app": level(3.0, 3.0, 3.0, 8)}, "8": {"app": level(6.0, 10.0, 6.0, 20)}}},
        "inprocess": {"failed": "AppError: did not start", "levels": {}}}}
    c = bench_serve.compare_load(res)
    assert c["vllm_app_over_engine"]["1"]["ttft_p50"] == 0.6 / 0.5
    assert c["vllm_p95_at_8_over_p50_at_1"] == 2.5
    assert c["batch_over_vllm_at_8"]["latency_p95_s"] == 2.0 and c["batch_over_vllm_at_8"]["tokens_per_s"] == 0.5
    assert set(c["errors_and_lost"]["8"]) == {"vllm", "batch"}  # a backend that failed to start has no row


def test_every_app_on_the_engine_is_divided_by_the_engines_own_figures():
    def level(ttft, tps, cpu_ms=None):
        return {"latency_p50_s": 2.0, "latency_p95_s": 2.0, "ttft_p50_s": ttft, "tokens_per_s": tps,
                "errors": 0, "lost_feedback_rows": 0, "app_cpu_ms_per_token": cpu_ms}

    res = {"user_levels": [32], "backends": {"vllm": {"levels": {"32": {
        "engine_direct": level(1.0, 100), "app": level(1.1, 80, 2.0), "app_before": level(2.0, 50, 5.0),
        "load_average_before": [8, 8, 8], "sample_answers": ["x"]}}}}}
    c = bench_serve.compare_load(res)
    assert c["vllm_app_over_engine"]["32"] == {"ttft_p50": 1.1, "latency_p50": 1.0, "tokens_per_s": 0.8,
                                               "app_cpu_ms_per_token": 2.0}
    assert c["vllm_app_before_over_engine"]["32"]["tokens_per_s"] == 0.5
    assert c["vllm_app_before_over_engine"]["32"]["app_cpu_ms_per_token"] == 5.0


def test_cpu_seconds_of_a_process_tree_include_its_children():
    import os
    import subprocess
    import time

    if not os.path.isdir("/proc"):
        import pytest

        pytest.skip("Linux /proc only")
    # a parent that only waits, and a child that burns CPU: the tree's seconds are the child's
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                               "'import time\\nt=time.process_time()\\nwhile time.process_time()-t<0.6: pass\\n"
                               "time.sleep(30)'])"])
    try:
        deadline = time.time() + 20
        while time.time() < deadline and (bench_serve.tree_cpu_s(parent.pid) or 0) < 0.5:
            time.sleep(0.2)
        assert bench_serve.tree_cpu_s(parent.pid) >= 0.5  # the parent alone used almost nothing
        with bench_serve.CpuMeter({"tree": parent.pid, "none": None}) as cpu:
            sum(range(10**5))
        assert cpu.used["none"] is None and 0 <= cpu.used["tree"] < 0.5 and cpu.used["client"] >= 0
    finally:
        for child in subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split():
            os.kill(int(child), 9)
        parent.kill()
        parent.wait()
