"""A model as judge: the ``judge`` metric (``runner.metrics=[...,judge]`` with ``judge=...``).

The judge is any model config (an OpenAI-compatible server, ``runners.serve``, a local model),
asked about each answer with a versioned prompt template from ``conf/judge/templates/`` and a
JSON Schema for its verdict (``{"score": 0..1, "reason": "..."}``, by constrained decoding
where the backend has it). A verdict that is not that JSON is a ``judge_error`` for its sample,
never a score.

Verdicts are kept in SQLite (``<paths.cache_dir>/judge/verdicts.sqlite``), keyed by the judge's
fingerprint, the template, the question, the reference and the answer: scoring a run again,
resuming one, or ``runners.evaluate`` asks the judge only what it was never asked. The judge's
calls, tokens and time are counted apart from the judged model's (``judge_*`` in metrics.csv).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from model_interface import ModelFactory
from model_interface.model_interface import PredictionRequest, predict_isolated
from runners.config.paths import CONFIG_DIR
from runners.errors import RunnerError
from runners.execution.fingerprint import model_fingerprint

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string"},
    },
    "required": ["score", "reason"],
    "additionalProperties": False,
}
TEMPLATES = CONFIG_DIR / "judge" / "templates"


@dataclass(frozen=True)
class Template:
    """A judge prompt: ``{question}``, ``{reference}`` and ``{answer}`` are filled in."""

    name: str
    version: int
    system: str
    user: str

    @classmethod
    def load(cls, name: str) -> Template:
        path = TEMPLATES / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in TEMPLATES.glob("*.yaml"))
            raise RunnerError(
                f"judge.template={name!r} is not in {TEMPLATES}; choose one of {known}"
            )
        data = OmegaConf.to_container(OmegaConf.load(path))
        return cls(name, int(data["version"]), str(data["system"]), str(data["user"]))

    def prompt(self, question: str, reference: str, answer: str) -> str:
        # Plain replacement: the template's own JSON example holds braces str.format would read.
        filled = self.user.replace("{question}", question).replace("{reference}", reference)
        return filled.replace("{answer}", answer)

    def fingerprint(self) -> dict[str, Any]:
        text = json.dumps([self.system, self.user])
        return {"name": self.name, "version": self.version, "sha256": _sha256(text)}


@dataclass
class JudgeStats:
    """What judging cost, apart from the judged model."""

    calls: int = 0  # verdicts asked of the judge (cached ones are not asked again)
    cached: int = 0
    errors: int = 0  # answers without a score: a verdict not the schema's JSON, a failed request
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def columns(self) -> dict[str, Any]:
        return {
            "judge_calls": self.calls,
            "judge_cached": self.cached,
            "judge_errors": self.errors,
            "judge_prompt_tokens": self.prompt_tokens,
            "judge_completion_tokens": self.completion_tokens,
            "judge_s": self.seconds,
        }


@dataclass
class Judge:
    """The judge of a run: its model config, template and verdict cache."""

    model_config: dict[str, Any]
    template: Template
    cache_path: Path
    batch_size: int = 8
    stats: JudgeStats = field(default_factory=JudgeStats)
    _lookup: sqlite3.Connection | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], cache_dir: str) -> Judge:
        if not config.get("model"):
            raise RunnerError(
                "judge.model is not set; choose a judge, e.g. judge=openai_compatible"
            )
        return cls(
            model_config=dict(config["model"]),
            template=Template.load(str(config.get("template") or "judge_v1")),
            cache_path=Path(cache_dir) / "judge" / "verdicts.sqlite",
            batch_size=int(config.get("batch_size") or 8),
        )

    def fingerprint(self) -> dict[str, Any]:
        """What decides a verdict: the judge model's class and settings, and the template."""
        return {**model_fingerprint(self.model_config), "template": self.template.fingerprint()}

    def judge_all(self, rows: Iterable[Mapping[str, str]]) -> None:
        """Ask the judge about every answer of ``rows`` not in the cache, a batch at a time."""
        with self._database() as database:
            pending: dict[str, tuple[str, str, str]] = {}
            for row in rows:
                if row.get("error"):
                    continue  # nothing answered: nothing to judge
                case = _case(row)
                key = self._key(case)
                if key in pending or _cached(database, key) is not None:
                    self.stats.cached += key not in pending
                    continue
                pending[key] = case
            if pending:
                self._ask(database, pending)

    def verdict(self, row: Mapping[str, str]) -> dict[str, Any]:
        """The row's ``judge`` score and ``judge_reason`` (or ``judge_error``), from the cache
        :meth:`judge_all` filled."""
        if row.get("error"):
            return {}
        if self._lookup is None:
            self._lookup = sqlite3.connect(self.cache_path, timeout=30)
        found = _cached(self._lookup, self._key(_case(row)))
        columns = _parsed(found) if found is not None else {"judge_error": "the judge failed"}
        self.stats.errors += "judge_error" in columns
        return columns

    def _ask(self, database: sqlite3.Connection, pending: dict[str, tuple[str, str, str]]) -> None:
        try:
            model = ModelFactory.from_config(self.model_config)
        except Exception as error:
            raise RunnerError(f"the judge could not be loaded: {error}") from None
        try:
            items = list(pending.items())
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                requests = [
                    PredictionRequest(
                        [],
                        self.template.prompt(*case),
                        system_prompt=self.template.system,
                        response_format=VERDICT_SCHEMA,
                    )
                    for _, case in batch
                ]
                began = time.perf_counter()
                answers = predict_isolated(model, requests)
                self.stats.seconds += time.perf_counter() - began
                self.stats.calls += len(batch)
                for (key, _), timed in zip(batch, answers, strict=True):
                    prediction = timed.prediction
                    self.stats.prompt_tokens += prediction.prompt_tokens or 0
                    self.stats.completion_tokens += prediction.completion_tokens or 0
                    if prediction.error is None:  # a failed request is asked again next time
                        database.execute(
                            "INSERT OR REPLACE INTO verdicts (key, text) VALUES (?, ?)",
                            (key, prediction.text),
                        )
                database.commit()  # each batch kept: a killed run does not ask it again
        finally:
            model.close()

    @functools.cached_property
    def _identity(self) -> str:
        return json.dumps(self.fingerprint(), sort_keys=True)

    def _key(self, case: tuple[str, str, str]) -> str:
        """A verdict's key in the cache: this judge, and the question, reference and answer."""
        return _sha256(json.dumps([self._identity, *case]))

    def close(self) -> None:
        if self._lookup is not None:
            self._lookup.close()
            self._lookup = None

    @contextlib.contextmanager
    def _database(self) -> Iterator[sqlite3.Connection]:
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            database = sqlite3.connect(self.cache_path, timeout=30)
        except (OSError, sqlite3.Error) as error:
            raise RunnerError(f"cannot open the judge's cache {self.cache_path}: {error}") from None
        try:
            database.execute(
                "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, text TEXT)"
            )
            yield database
        finally:
            database.close()


def _case(row: Mapping[str, str]) -> tuple[str, str, str]:
    """What a verdict is about: the question as asked, the reference and the answer."""
    return row["prompt"], row.get("reference") or "", row["prediction"]


def _cached(database: sqlite3.Connection, key: str) -> str | None:
    found = database.execute("SELECT text FROM verdicts WHERE key = ?", (key,)).fetchone()
    return None if found is None else found[0]


def _parsed(text: str) -> dict[str, Any]:
    """A verdict as columns: ``judge`` and ``judge_reason``, or ``judge_error`` saying why not."""
    try:
        verdict = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return {"judge_error": f"the verdict is not JSON: {text[:80]!r}"}
    score = verdict.get("score") if isinstance(verdict, dict) else None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        return {"judge_error": f"the verdict has no score from 0 to 1: {text[:80]!r}"}
    return {"judge": float(score), "judge_reason": str(verdict.get("reason", ""))}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
