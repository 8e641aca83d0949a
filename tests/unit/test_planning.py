"""Before deploy: the planner's monthly figures and a simulated period with an outage."""

from pathlib import Path

import pytest

from sidecar.__main__ import main
from sidecar.core.router import ActivePolicy
from sidecar.planning.plan import cheapest_meeting, plan
from sidecar.planning.simulate import Failure, load_failures, simulate
from sidecar.planning.traffic import TrafficError, load_traffic
from sidecar.policy.loader import load_policy, resolve_credentials
from tests.conftest import DEMO_CREDENTIALS, DEMO_POLICY, ROOT

TRAFFIC = ROOT / "examples" / "traffic.yaml"


@pytest.fixture(scope="module")
def active() -> ActivePolicy:
    policy = load_policy(DEMO_POLICY)
    return ActivePolicy(policy, resolve_credentials(policy, DEMO_CREDENTIALS, "policy"))


def test_the_plan_prices_each_variant_and_finds_the_cheapest_that_meets_the_bars(
    active: ActivePolicy,
) -> None:
    results = {r.name: r for r in plan(active.policy, load_traffic(TRAFFIC))}
    # 7 M general requests at (600 x 2.5 + 250 x 10) / 1e6 and 3 M code requests at
    # (1500 x 2.5 + 500 x 10) / 1e6 on openai-premium.
    assert results["policy"].monthly_cost_usd == 28_000 + 26_250
    assert results["policy"].clusters == {"openai-premium": 1.0}
    assert results["policy"].mean_accuracy == pytest.approx(0.7 * 0.88 + 0.3 * 0.90)
    cheap = results["all on openai-cheap"]
    assert not cheap.meets_bars, "too inaccurate"
    assert cheap.monthly_cost_usd < results["policy"].monthly_cost_usd
    best = cheapest_meeting(list(results.values()))
    assert best is not None
    assert best.monthly_cost_usd == 54_250


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mix: []\nrequests_per_month: 1\n", "at least one entry"),
        (
            "requests_per_month: 1\nmix: [{tier: paid, model: chat, share: 0.5}]\n",
            "add up to 0.5",
        ),
        ("requests_per_month: -3\nmix: [{tier: paid, model: chat, share: 1}]\n", ">= 0"),
        ("requests_per_month: 1\nmix: [{tier: paid, share: 1}]\n", "missing model"),
    ],
)
def test_bad_traffic_files_say_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "traffic.yaml"
    path.write_text(text)
    with pytest.raises(TrafficError, match=message):
        load_traffic(path)


def test_a_simulated_outage_moves_traffic_and_costs_little_availability(
    active: ActivePolicy,
) -> None:
    traffic = load_traffic(TRAFFIC)
    outage = (Failure("openai-premium", 1800.0, 3600.0, "down"),)
    report = simulate(active, traffic, 7200.0, outage)
    again = simulate(active, traffic, 7200.0, outage)
    assert report.summary() | {"cpu_s": 0} == again.summary() | {"cpu_s": 0}
    assert report.requests == 27_778
    assert report.served_by["enterprise-dedicated"] > 0, "the outage moved traffic"
    assert report.served_by["openai-premium"] > report.served_by["enterprise-dedicated"]
    assert report.rungs["failed"] > 0, "calls made before the breaker opened fail"
    assert 0.99 < report.availability < 1.0
    assert report.breaker_trips >= 1


def test_the_commands_print_their_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = tmp_path / "plan.json"
    code = main(
        ["plan", "--policy", str(DEMO_POLICY), "--traffic", str(TRAFFIC), "--json", str(written)]
    )
    assert code == 0
    assert "cheapest that meets the bars" in capsys.readouterr().out
    assert '"cheapest_meeting_bars": "policy"' in written.read_text()
    failures = tmp_path / "failures.yaml"
    failures.write_text("duration_s: 600\nfailures: []\n")
    code = main(
        [
            "simulate",
            "--policy", str(DEMO_POLICY),
            "--traffic", str(TRAFFIC),
            "--failures", str(failures),
        ]
    )  # fmt: skip
    assert code == 0
    assert "availability (answered by a model): 100.0000%" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("failures: [{mode: down, from_s: 0, to_s: 10}]\n", "unknown cluster ''"),
        ("failures: [{cluster: openai-premum, mode: down, to_s: 10}]\n", "unknown cluster"),
        ("failures: [{cluster: openai-premium, mode: slow, to_s: 10}]\n", "latency_s"),
        ("failures: [{cluster: openai-premium, mode: down, from_s: 9, to_s: 1}]\n", "after"),
        ("duration_s: 1h\n", "duration_s"),
        ("- a list\n", "expected a mapping"),
        ("failures: [\n", "cannot read"),
    ],
)
def test_bad_failure_scripts_say_where(
    active: ActivePolicy, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "failures.yaml"
    path.write_text(text)
    with pytest.raises(TrafficError, match=message):
        load_failures(path, active.policy)


def test_the_planner_refuses_what_it_cannot_price(active: ActivePolicy, tmp_path: Path) -> None:
    path = tmp_path / "traffic.yaml"
    path.write_text(
        "requests_per_month: 1000\np95_s: {openai-premum: 1}\n"
        "mix: [{tier: paid, model: assistant, share: 1}]\n"
    )
    with pytest.raises(TrafficError, match="p95_s names clusters the policy lacks"):
        plan(active.policy, load_traffic(path))
    path.write_text(
        "requests_per_month: 1000\n"
        "mix: [{tier: paid, model: assistant, share: 1, prompt_tokens: 200000}]\n"
    )
    with pytest.raises(TrafficError, match="context windows"):
        plan(active.policy, load_traffic(path))
