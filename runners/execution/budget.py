"""What a run spends on a priced model, and the limits that stop it.

A model config may carry its prices, ``pricing: {input_per_million: 2.5, output_per_million:
10}`` (the currency is the config's; none by default): a run's cost is its prompt and
completion tokens at those prices, in metrics.csv as ``cost`` and ``cost_per_sample``
(:class:`runners.metrics.summaries.Spending`). ``runner.max_cost`` and
``runner.max_tokens_total`` stop a run once what its answers spent (those of earlier attempts
included) reaches them: after the batch that reached the limit, with one line, every answer
kept, so the same command with a higher limit goes on where it stopped. A run split into
shards counts each shard's answers apart.

Token counts are the model's (a server's ``usage``); a cost is never guessed: with a sample
answered without them, the run's cost is unknown (empty), and ``max_cost`` refuses to go on.
"""

from __future__ import annotations

from dataclasses import dataclass

from runners.errors import RunnerError
from runners.metrics.summaries import Spending


@dataclass(frozen=True)
class Budget:
    """``runner.max_cost`` and ``runner.max_tokens_total`` (None: no limit)."""

    max_cost: float | None
    max_tokens_total: int | None

    def check(self, spent: Spending) -> None:
        """Raise the run's one line if ``spent`` reached a limit, or if a limit can't be kept
        because answers came without token counts."""
        limits = [
            ("runner.max_tokens_total", self.max_tokens_total, spent.tokens),
            ("runner.max_cost", self.max_cost, spent.cost),
        ]
        for name, limit, used in limits:
            if limit is None:
                continue
            if spent.uncounted:
                raise _stop(
                    f"{name} can't be kept: {spent.uncounted} answer(s) came without token counts",
                    "unset it for this model",
                )
            if used is None:  # no prices: refused before the run, by the plan
                raise RunnerError(f"{name} is set but the model config has no pricing")
            if used >= limit:
                raise _stop(f"{name}={limit:g} reached ({used:.6g})", "raise it")


def _stop(reason: str, fix: str) -> RunnerError:
    return RunnerError(
        f"{reason}: the run stopped, its answers are kept; {fix} and run the same command "
        "again to go on",
        exit_code=1,
    )
