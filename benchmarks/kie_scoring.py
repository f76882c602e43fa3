"""Field extraction scoring: parsing and scoring 100,000 field rows.

    python benchmarks/kie_scoring.py [--documents 10000] [--fields 10] [--repeats 3]

``--documents`` answers of ``--fields`` fields each (100,000 field rows by default), a mix as a
model gives them: right, fenced in a code block, some fields wrong, missing or extra, not JSON
at all. Each is scored by the KIE task (parsing, schema validation, exact match, ANLS, CER,
precision/recall per field) and summed up by its tally, fields.csv written as rows come.
Beside it, in the same process, the least a scorer can do: ``json.loads`` and an exact string
comparison per field. Figures: ``kie_field_rows_per_s`` and ``kie_scoring_over_bare``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from common import median, print_figures, print_table

from runners.tasks.kie import KIETask


def make_documents(count: int, fields: int, seed: int = 0) -> list[tuple[str, dict[str, str]]]:
    """(answer text, reference) pairs: a fifth of each kind of answer."""
    rng = random.Random(seed)
    documents = []
    for index in range(count):
        reference = {
            f"Поле {field}": f"{rng.randint(0, 10**8):08d} {'АБВГД'[field % 5]}"
            for field in range(fields)
        }
        answer = dict(reference)
        kind = index % 5
        if kind == 2:  # some fields wrong, one missing, one extra
            for name in rng.sample(sorted(answer), 3):
                answer[name] = answer[name][::-1]
            answer.pop(next(iter(answer)))
            answer["Лишнее"] = "x"
        text = json.dumps(answer, ensure_ascii=False)
        if kind == 1:
            text = f"Here are the fields:\n```json\n{text}\n```"
        if kind == 3:
            text = "Фамилия: ОСИПОВ; Номер: 353-721-310 54"
        documents.append((text, reference))
    return documents


def task_seconds(documents: list[tuple[str, dict[str, str]]], work: Path) -> float:
    task = KIETask(metric_names=[])
    started = time.perf_counter()
    tally = task.tally(work)
    for index, (answer, reference) in enumerate(documents):
        tally.add({"sample_id": str(index), **task.score(answer, reference)}, reference)
    tally.close()
    tally.summary()
    return time.perf_counter() - started


def bare_seconds(documents: list[tuple[str, dict[str, str]]]) -> float:
    started = time.perf_counter()
    right = 0
    for answer, reference in documents:
        try:
            parsed = json.loads(answer)
        except ValueError:
            continue
        right += sum(parsed.get(name) == value for name, value in reference.items())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--fields", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    documents = make_documents(args.documents, args.fields)
    rows = args.documents * args.fields
    with tempfile.TemporaryDirectory() as work:
        task_times = [task_seconds(documents, Path(work)) for _ in range(args.repeats)]
    bare_times = [bare_seconds(documents) for _ in range(args.repeats)]
    task_s, bare_s = median(task_times), median(bare_times)
    print(
        f"\n{args.documents} documents x {args.fields} fields = {rows} field rows, "
        f"median of {args.repeats}"
    )
    table = [["KIE task", task_s, rows / task_s], ["json.loads + ==", bare_s, rows / bare_s]]
    print_table(["scorer", "seconds", "field rows/s"], table)
    print_figures(kie_field_rows_per_s=rows / task_s, kie_scoring_over_bare=task_s / bare_s)


if __name__ == "__main__":
    main()
