"""Model wrappers the runner tests load by class path, e.g. ``tests.support.wrappers:SlowDummy``."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from model_interface.backends.dummy import DummyModel
from model_interface.model_interface import Prediction, PredictionRequest


class SlowDummy(DummyModel):
    """The dummy model, taking ``delay_s`` per batch: slow enough to be killed mid-run."""

    def __init__(self, *args, delay_s: float = 0.05, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        time.sleep(self.delay_s)
        return super().predict_batch(requests)


class FailsOnKeyword(DummyModel):
    """Raises on any batch holding a prompt that contains ``keyword``, like a model that runs
    out of memory on one oversized input."""

    def __init__(self, *args, keyword: str = "boom", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.keyword = keyword
        self.calls: list[int] = []

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        self.calls.append(len(requests))
        if any(self.keyword in request.prompt for request in requests):
            raise RuntimeError(f"cannot handle {self.keyword!r}")
        return super().predict_batch(requests)


class PromptEcho(DummyModel):
    """Answers each request with its prompt, so a test can choose every answer."""

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        return [
            Prediction(request.prompt, prompt_tokens=1, completion_tokens=1) for request in requests
        ]


class CountsLoads(DummyModel):
    """The dummy model, adding a line to the file ``loads_file`` each time it is constructed."""

    def __init__(self, *args, loads_file: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        with open(loads_file, "a", encoding="utf-8") as handle:
            handle.write("loaded\n")


class KnownAnswers(DummyModel):
    """Answers each question with the answer ``answers_file`` (JSON: question -> answer) holds
    for it: the question the prompt starts with (a benchmark's prompt adds an instruction)."""

    def __init__(self, *args, answers_file: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        with open(answers_file, encoding="utf-8") as handle:
            self.answers: dict[str, str] = json.load(handle)

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        return [Prediction(self._answer(request.prompt)) for request in requests]

    def _answer(self, prompt: str) -> str:
        asked = [question for question in self.answers if prompt.startswith(question)]
        return self.answers[max(asked, key=len)] if asked else ""


class Thinks(DummyModel):
    """A reasoning model: ``<think>`` a thought holding the chat-template options it was given
    ``</think>``, then ``42``; a question holding "cut" is thought about until the token limit
    ends it, inside the thinking; one holding "stop" ends its turn inside the thinking."""

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        answers = []
        for request in requests:
            settings = self.settings_for(request)
            options = json.dumps(settings.chat_template_kwargs, sort_keys=True)
            text = f"<think>long thought {options}"
            used = settings.max_new_tokens if "cut" in request.prompt else len(text.split())
            if "cut" not in request.prompt and "stop" not in request.prompt:
                text += "</think>42"
            answers.append(Prediction(text, prompt_tokens=3, completion_tokens=used))
        return answers


class KnownVerdicts(DummyModel):
    """A judge that knows the verdict: score 1 when the candidate answer in the judge's prompt
    equals the reference answer, else 0; with ``garbage``, a verdict that is no JSON. Counts the
    verdicts it was asked for in ``asked_file``, a line each, if given."""

    def __init__(self, *args, garbage: bool = False, asked_file: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.garbage, self.asked_file = garbage, asked_file

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        if self.asked_file:
            with open(self.asked_file, "a", encoding="utf-8") as handle:
                handle.write("".join("asked\n" for _ in requests))
        return [Prediction(self._verdict(r.prompt), 20, 8) for r in requests]

    def _verdict(self, prompt: str) -> str:
        if self.garbage:
            return "I think it is fine."
        fields = dict(line.split(": ", 1) for line in prompt.splitlines() if line.count(": ") >= 1)
        same = fields.get("Reference answer") == fields.get("Candidate answer")
        return json.dumps({"score": int(same), "reason": "same" if same else "different"})
