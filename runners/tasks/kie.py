"""Key information extraction: one request per document asks for all its fields as one JSON
object; the answer is parsed and compared field by field with the ground truth.

The fields to ask for are the document's own (the keys of its ground truth), or the properties
of a JSON Schema given as ``schema_file``. With ``constrained`` (the default) each request
carries the schema as its response format, so backends that constrain decoding (all of ours)
can only answer JSON that follows it; every string gets ``max_field_chars`` as its length
limit, and the request asks for as many new tokens as the longest such answer can take.

Per document (columns of predictions.csv): ``json_valid`` (a JSON object could be read from the
answer, code fences and text around it allowed), ``schema_valid`` (it follows the schema),
``field_exact_match``, ``field_anls``, ``field_cer`` (means over the document's fields, a missing
field compared as an empty answer), ``field_precision``, ``field_recall``, ``field_f1`` (over
the pairs of flattened key path and normalised value: a pair is right when the ground truth has
the same value at the same path) and ``all_fields_correct``. Over the run (metrics.csv): the
share of valid answers, field metrics micro-averaged over all fields, and the share of
documents with every field right. ``metrics_by_field.csv`` has each field's figures,
``fields.csv`` one row per document and field: reference, prediction, scores, status.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model_interface.model_interface import PredictionRequest
from runners import metrics as quality
from runners.datasets import Sample
from runners.records import flatten
from runners.rundir.predictions import CsvStream
from runners.tasks.base import ScoreGuide, Tally, Task, TaskError

DEFAULT_PROMPT = (
    "Extract these fields from the document: {fields}. Answer with one JSON object whose keys "
    "are exactly these field names and whose values are the texts as printed; use an empty "
    "string for a field the document does not show."
)
FIELD_METRICS = ("exact_match", "anls", "cer")
BYTES_PER_CHAR = 6  # the most one character of a JSON string can take: a \uXXXX escape
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


class KIETask(Task):
    """Ask for a document's fields as JSON, and score them.

    Args:
        schema_file: a JSON Schema file for every document; ``None`` derives each document's
            schema from its ground truth (every field required, no others).
        prompt_template: the request's prompt; ``{fields}`` lists the field names, ``{prompt}``
            is the dataset's question, if it has one.
        constrained: send the schema as the response format (constrained decoding).
        max_field_chars: the length limit of every string the constrained schema allows.
    """

    name = "kie"

    def __init__(
        self,
        *,
        metric_names: Sequence[str],
        schema_file: str | None = None,
        prompt_template: str = DEFAULT_PROMPT,
        constrained: bool = True,
        max_field_chars: int = 100,
    ) -> None:
        super().__init__(metric_names=metric_names)
        if max_field_chars < 1:
            raise TaskError(f"task.max_field_chars must be >= 1, got {max_field_chars}")
        self.schema_file = schema_file
        self.schema = _read_schema(Path(schema_file)) if schema_file else None
        self.prompt_template = prompt_template
        self.constrained = constrained
        self.max_field_chars = max_field_chars
        self._validators: dict[str, Any] = {}

    def check(self, sample: Sample) -> None:
        if sample.reference is not None and not isinstance(sample.reference, Mapping):
            raise TaskError(
                f"sample {sample.id!r} has {type(sample.reference).__name__} for its answer; "
                "task=kie needs an object of fields (jsons/<page>.json, or a JSON object as "
                "the answer in JSONL)"
            )
        if self.schema is None and not sample.reference:
            raise TaskError(
                f"sample {sample.id!r} has no fields to ask for; give them in its ground truth "
                "or as task.schema_file"
            )

    def schema_for(self, sample: Sample) -> dict[str, Any]:
        """The schema the answer for ``sample`` must follow."""
        return self.schema if self.schema is not None else derived_schema(sample.reference)

    def request(self, sample: Sample, images: Sequence[Any]) -> PredictionRequest:
        schema = self.schema_for(sample)
        names = ", ".join(schema.get("properties", {}))
        prompt = self.prompt_template.format(fields=names, prompt=sample.prompt)
        if not self.constrained:
            return PredictionRequest(images, prompt)
        bounded = with_string_limit(schema, self.max_field_chars)
        budget = longest_answer_bytes(bounded)
        generation = {"max_new_tokens": budget} if budget is not None else None
        return PredictionRequest(images, prompt, generation=generation, response_format=bounded)

    @property
    def columns(self) -> list[str]:
        return [
            "json_valid",
            "schema_valid",
            "field_exact_match",
            "field_anls",
            "field_cer",
            "field_precision",
            "field_recall",
            "field_f1",
            "all_fields_correct",
        ]

    def score_guide(self) -> ScoreGuide:
        return ScoreGuide(
            higher_is_better={
                **{name: name != "field_cer" for name in self.columns},
                "documents_all_correct": True,
            },
            rank_by="field_f1",
            correctness="all_fields_correct",
            group_files=("metrics_by_group.csv", "metrics_by_field.csv"),
        )

    def score(self, prediction: str, reference: Any) -> dict[str, Any]:
        if reference is None:
            return {}
        answer = parse_json_answer(prediction)
        fields = compare_fields(answer, reference)
        right = sum(field["exact_match"] for field in fields if field["status"] != "extra")
        counts = _pair_counts(fields)
        return {
            "json_valid": float(answer is not None),
            "schema_valid": float(answer is not None and self._follows(answer, reference)),
            **{
                f"field_{name}": _mean(f[name] for f in fields if f["status"] != "extra")
                for name in FIELD_METRICS
            },
            **_precision_recall_f1(*counts),
            "all_fields_correct": float(right == counts[2]),
            "details": fields,  # for the tally; not a column
        }

    def tally(self, run_dir: Path) -> Tally:
        return _KIETally(run_dir)

    def fingerprint(self) -> dict[str, Any]:
        return {"schema": self.schema}

    def _follows(self, answer: Any, reference: Any) -> bool:
        import jsonschema

        schema = self.schema if self.schema is not None else derived_schema(reference)
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            self._validators[key] = jsonschema.Draft202012Validator(schema)
        return self._validators[key].is_valid(answer)


def derived_schema(reference: Any) -> dict[str, Any]:
    """The JSON Schema of a ground-truth value: every field of an object required, no others."""
    if isinstance(reference, Mapping):
        return {
            "type": "object",
            "properties": {name: derived_schema(value) for name, value in reference.items()},
            "required": list(reference),
            "additionalProperties": False,
        }
    if isinstance(reference, list):
        return {"type": "array", "items": derived_schema(reference[0]) if reference else {}}
    if isinstance(reference, bool):
        return {"type": "boolean"}
    if isinstance(reference, (int, float)):
        return {"type": "number"}
    if reference is None:
        return {"type": "null"}
    return {"type": "string"}


def with_string_limit(schema: Any, limit: int) -> Any:
    """``schema`` with ``maxLength: limit`` on every string that has no limit of its own, so
    that a constrained answer always ends."""
    if isinstance(schema, list):
        return [with_string_limit(item, limit) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    limited = {key: with_string_limit(value, limit) for key, value in schema.items()}
    if schema.get("type") == "string" and "maxLength" not in schema:
        limited["maxLength"] = limit
    return limited


def longest_answer_bytes(schema: Mapping[str, Any]) -> int | None:
    """The most bytes (so the most tokens: a token holds at least one byte) a compact JSON
    answer following ``schema`` can take; ``None`` when nothing bounds it (an array)."""
    kind = schema.get("type")
    if kind == "object":
        total = 2
        for name, part in schema.get("properties", {}).items():
            value = longest_answer_bytes(part)
            if value is None:
                return None
            total += len(json.dumps(name).encode()) + 4 + value  # ": " and ", "
        return total
    if kind == "string":
        return 2 + BYTES_PER_CHAR * schema["maxLength"] if "maxLength" in schema else None
    if kind in ("number", "integer"):
        return 32
    if kind in ("boolean", "null"):
        return 5
    return None


def parse_json_answer(text: str) -> Any:
    """The JSON object an answer holds: the whole answer, the inside of a code fence, or the
    first balanced ``{...}`` in it; ``None`` if there is none."""
    candidates = [text.strip()]
    candidates += [match.group(1).strip() for match in _FENCE.finditer(text)]
    candidates.append(_first_object(text))
    for candidate in candidates:
        if not candidate:
            continue
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _first_object(text: str) -> str:
    """The first balanced ``{...}`` in ``text`` (braces inside JSON strings don't count)."""
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for index in range(start, len(text)):
            char = text[index]
            if in_string:
                escaped = not escaped and char == "\\"
                in_string = escaped or char != '"'
                continue
            if char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start : index + 1]
        start = text.find("{", start + 1)
    return ""


def compare_fields(answer: Any, reference: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per field: the ground truth's, each compared with the answer's value at the
    same path (missing: an empty answer), then the answer's extra fields."""
    predicted = flatten(answer, lists=True) if isinstance(answer, Mapping) else {}
    fields = []
    for path, expected in flatten(reference, lists=True).items():
        text = _text(expected)
        given = _text(predicted[path]) if path in predicted else ""
        scores = {
            "exact_match": quality.exact_match(given, text),
            "anls": quality.anls(given, text),
            "cer": quality.cer(given, text),
        }
        if path not in predicted:
            status = "missing"
        else:
            status = "match" if scores["exact_match"] else "mismatch"
        fields.append(
            {"field": path, "reference": text, "prediction": given, "status": status, **scores}
        )
    reference_paths = {field["field"] for field in fields}
    for path, value in predicted.items():
        if path not in reference_paths:
            unscored = dict.fromkeys(FIELD_METRICS, math.nan)
            fields.append(
                {
                    "field": path,
                    "reference": "",
                    "prediction": _text(value),
                    "status": "extra",
                    **unscored,
                }
            )
    return fields


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)


def _pair_counts(fields: Sequence[Mapping[str, Any]]) -> tuple[int, int, int]:
    """(right pairs, predicted pairs, reference pairs) of a document's fields."""
    right = sum(field["status"] == "match" for field in fields)
    predicted = sum(field["status"] != "missing" for field in fields)
    expected = sum(field["status"] != "extra" for field in fields)
    return right, predicted, expected


def _precision_recall_f1(right: int, predicted: int, expected: int) -> dict[str, float]:
    figures = quality.precision_recall_f1(right, predicted, expected, nothing_is_right=True)
    return dict(zip(("field_precision", "field_recall", "field_f1"), figures, strict=True))


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _read_schema(path: Path) -> dict[str, Any]:
    try:
        schema = json.loads(path.expanduser().read_text(encoding="utf-8-sig"))
    except OSError as error:
        raise TaskError(f"cannot read task.schema_file {str(path)!r}: {error.strerror}") from None
    except ValueError as error:
        raise TaskError(f"task.schema_file {str(path)!r} is not JSON: {error}") from None
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise TaskError(f"task.schema_file {str(path)!r} must be a JSON Schema of an object")
    return schema


FIELD_COLUMNS = ["sample_id", "field", "reference", "prediction", "status", *FIELD_METRICS]


class _KIETally(Tally):
    """Run-level figures, per-field figures, and fields.csv written as rows come."""

    def __init__(self, run_dir: Path) -> None:
        self.documents = self.json_valid = self.schema_valid = self.all_right = 0
        self.right = self.predicted = self.expected = 0
        self.sums = dict.fromkeys(FIELD_METRICS, 0.0)
        self.per_field: dict[str, dict[str, float]] = {}
        self.fields_csv = CsvStream(run_dir / "fields.csv", FIELD_COLUMNS)

    def add(self, row: Mapping[str, Any], reference: Any) -> None:
        fields = row.get("details")
        if fields is None:  # no ground truth for this sample
            return
        self.documents += 1
        self.json_valid += float(row["json_valid"])
        self.schema_valid += float(row["schema_valid"])
        self.all_right += float(row["all_fields_correct"])
        right, predicted, expected = _pair_counts(fields)
        self.right, self.predicted = self.right + right, self.predicted + predicted
        self.expected += expected
        for field in fields:
            self.fields_csv.write({"sample_id": row["sample_id"], **field})
            if field["status"] == "extra":
                continue
            figures = self.per_field.setdefault(
                field["field"], {"n": 0, "missing": 0, **dict.fromkeys(FIELD_METRICS, 0.0)}
            )
            figures["n"] += 1
            figures["missing"] += field["status"] == "missing"
            for name in FIELD_METRICS:
                figures[name] += field[name]
                self.sums[name] += field[name]

    def summary(self) -> dict[str, Any]:
        documents = self.documents or math.nan
        expected = self.expected or math.nan
        return {
            "json_valid": self.json_valid / documents,
            "schema_valid": self.schema_valid / documents,
            **{f"field_{name}": self.sums[name] / expected for name in FIELD_METRICS},
            **_precision_recall_f1(self.right, self.predicted, self.expected),
            "documents_all_correct": self.all_right / documents,
        }

    def files(self) -> dict[str, list[dict[str, Any]]]:
        by_field = [
            {
                "field": name,
                "n": figures["n"],
                "missing": figures["missing"] / figures["n"],
                **{metric: figures[metric] / figures["n"] for metric in FIELD_METRICS},
            }
            for name, figures in self.per_field.items()
        ]
        return {"metrics_by_field.csv": by_field}

    def close(self) -> None:
        self.fields_csv.close()
