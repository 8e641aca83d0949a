"""Live latency per cluster: nearest-rank quantiles over a sliding window, fake clock."""

from sidecar.core.latency import MAX_SAMPLES, LatencyBoard, nearest_rank


def test_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 0.5) == 50
    assert nearest_rank(values, 0.95) == 95
    assert nearest_rank([7.0], 0.95) == 7.0
    assert nearest_rank([], 0.5) is None


def test_quantiles_follow_the_recent_calls_of_the_window() -> None:
    board = LatencyBoard(["fast", "slow"], window_s=60)
    for n in range(20):
        board.observe("slow", ttft_s=1.0 + n / 100, total_s=2.0 + n / 100, now=float(n))
    summary = board.summary("slow", now=20.0)
    assert summary.samples == 20
    assert summary.ttft_p50 == 1.09
    assert summary.total_p95 == 2.18
    empty = board.summary("fast", now=20.0)
    assert (empty.samples, empty.ttft_p95) == (0, None)
    later = board.summary("slow", now=75.0)  # the first 15 samples are older than 60 s
    assert later.samples == 5
    assert later.ttft_p50 == 1.17


def test_memory_is_bounded_and_unknown_clusters_are_ignored() -> None:
    board = LatencyBoard(["a"])
    for n in range(MAX_SAMPLES + 50):
        board.observe("a", 0.1, 0.2, now=float(n) / 1000)
    board.observe("not-in-policy", 0.1, 0.2, now=1.0)
    assert board.summary("a", now=1.0).samples == MAX_SAMPLES


def test_the_state_view_and_a_reload_keep_the_samples() -> None:
    earlier = LatencyBoard(["a", "gone"])
    earlier.observe("a", 0.25, 1.5, now=1.0)
    later = LatencyBoard(["a", "new"])
    later.carry_over(earlier)
    view = later.snapshot(now=2.0)
    assert view["a"] == {
        "samples": 1,
        "ttft_p50_s": 0.25,
        "ttft_p95_s": 0.25,
        "total_p50_s": 1.5,
        "total_p95_s": 1.5,
    }
    assert view["new"]["samples"] == 0
