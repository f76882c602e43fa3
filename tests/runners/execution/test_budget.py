"""Cost at a model's prices, and runs stopped by runner.max_cost / runner.max_tokens_total
(runners/execution/budget.py)."""

from __future__ import annotations

import pytest

from runners.errors import RunnerError
from runners.execution.budget import Budget
from runners.metrics.summaries import Pricing, RunTally, Spending
from tests.support.helpers import error_lines, read_metrics, read_predictions, run_cli

PRICES = Pricing(input_per_million=2.5, output_per_million=10)


def test_cost_is_tokens_at_the_prices_and_unknown_when_a_count_is_missing() -> None:
    spent = Spending(PRICES)
    spent.add(
        [
            {"prompt_tokens": 1000, "completion_tokens": 200},
            {"prompt_tokens": "3000", "completion_tokens": "800"},
        ]
    )
    assert (spent.prompt_tokens, spent.completion_tokens, spent.tokens) == (4000, 1000, 5000)
    assert spent.cost == pytest.approx((4000 * 2.5 + 1000 * 10) / 1e6)  # 0.02
    spent.add([{"prompt_tokens": "", "completion_tokens": "", "error": "HTTP 500"}])
    assert spent.cost is not None  # a failed request spent nothing known
    spent.add([{"prompt_tokens": "", "completion_tokens": ""}])
    assert spent.uncounted == 1 and spent.cost is None  # an answer of unknown cost
    assert Spending(None).cost is None  # no prices, no cost


def test_metrics_carry_the_cost_and_the_cost_per_sample() -> None:
    tally = RunTally(PRICES)
    for tokens in ((1000, 200), (3000, 800)):
        tally.add(
            {
                "batch_size": "2",
                "call_s": "1",
                "error": "",
                "prompt_tokens": str(tokens[0]),
                "completion_tokens": str(tokens[1]),
            }
        )
    summary = tally.summary()
    assert summary["cost"] == pytest.approx(0.02)
    assert summary["cost_per_sample"] == pytest.approx(0.01)
    assert RunTally().summary()["cost"] is None


@pytest.mark.parametrize(
    ("pricing", "message"),
    [
        (
            {"input": 1},
            "model.pricing must be {input_per_million: <price>, output_per_million: <price>} "
            "(per million tokens), got {'input': 1}",
        ),
        (
            {"input_per_million": -1},
            "model.pricing prices must be numbers >= 0, got {'input_per_million': -1}",
        ),
        (
            {"input_per_million": "cheap"},
            "model.pricing prices must be numbers >= 0, got {'input_per_million': 'cheap'}",
        ),
    ],
)
def test_bad_prices_are_one_line(pricing, message) -> None:
    with pytest.raises(ValueError) as info:
        Pricing.of({"pricing": pricing})
    assert str(info.value) == message


def test_a_limit_reached_or_unknowable_stops_with_one_line() -> None:
    spent = Spending(PRICES)
    spent.add([{"prompt_tokens": 1000, "completion_tokens": 200}])
    Budget(max_cost=0.01, max_tokens_total=1201).check(spent)  # 0.0045 and 1200: under both
    with pytest.raises(RunnerError) as info:
        Budget(max_cost=0.004, max_tokens_total=None).check(spent)
    assert str(info.value) == (
        "runner.max_cost=0.004 reached (0.0045): the run stopped, its answers are kept; raise "
        "it and run the same command again to go on"
    )
    with pytest.raises(RunnerError, match=r"^runner.max_tokens_total=1200 reached \(1200\)"):
        Budget(max_cost=None, max_tokens_total=1200).check(spent)
    spent.add([{"prompt_tokens": None, "completion_tokens": None}])
    with pytest.raises(RunnerError, match=r"^runner.max_cost can't be kept: 1 answer\(s\) came"):
        Budget(max_cost=1, max_tokens_total=None).check(spent)


@pytest.mark.slow
def test_a_run_stops_at_its_budget_and_goes_on_when_it_is_raised(model_cache, tmp_path) -> None:
    # One unit of cost per prompt token and per completion token: the cost is the tokens.
    command = [
        "model=dummy",
        "+model.pricing.input_per_million=1000000",
        "+model.pricing.output_per_million=1000000",
        "runner.batch_size=8",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    stopped = run_cli(*command, "runner.max_cost=300", cwd=tmp_path, cache_dir=model_cache)
    assert stopped.returncode == 1, stopped.stdout[-3000:]
    [line] = error_lines(stopped.stdout)
    assert "runner.max_cost=300 reached (" in line
    assert line.endswith(
        "the run stopped, its answers are kept; raise it and run the same command again to go on"
    )
    kept = read_predictions(tmp_path / "run")
    spent = kept["prompt_tokens"].sum() + kept["completion_tokens"].sum()
    before_last = (
        spent - kept.tail(8)["prompt_tokens"].sum() - kept.tail(8)["completion_tokens"].sum()
    )
    assert before_last < 300 <= spent  # stopped after the batch that reached it
    assert len(kept) % 8 == 0 and 0 < len(kept) < 48

    # The same command again: the budget is spent, so it stops before loading the model.
    again = run_cli(*command, "runner.max_cost=300", cwd=tmp_path, cache_dir=model_cache)
    assert again.returncode == 1 and "samples, batch size" not in again.stdout  # no model
    assert len(read_predictions(tmp_path / "run")) == len(kept)

    finished = run_cli(*command, "runner.max_cost=1000000", cwd=tmp_path, cache_dir=model_cache)
    assert finished.returncode == 0, finished.stdout[-3000:]
    rows = read_predictions(tmp_path / "run")
    assert len(rows) == 48 and rows["sample_id"].is_unique
    metrics = read_metrics(tmp_path / "run")
    total = rows["prompt_tokens"].sum() + rows["completion_tokens"].sum()
    assert metrics["cost"] == pytest.approx(total)
    assert metrics["cost_per_sample"] == pytest.approx(total / 48)


@pytest.mark.slow
def test_max_cost_without_prices_is_refused_before_anything_runs(model_cache, tmp_path) -> None:
    result = run_cli("model=dummy", "runner.max_cost=1", cwd=tmp_path, cache_dir=model_cache)
    assert result.returncode == 2
    [line] = error_lines(result.stdout)
    assert line.endswith(
        "runner.max_cost is set but the model config has no pricing; add "
        "+model.pricing.input_per_million=... +model.pricing.output_per_million=..."
    )
    assert not list(tmp_path.rglob("predictions.csv"))
