"""Throughput of ``OpenAIModel`` against ``runners.serve`` at client concurrency 1, 4 and 8.

    python benchmarks/http_concurrency.py [--model tiny_qwen2_vl] [--samples 32] [--repeats 5]

It starts ``python -m runners.serve model=<model>`` on a free port, sends the same samples of
data/sample_docs (cycled if there are fewer) at each concurrency, once to warm up and then
``--repeats`` times, and prints the median throughput. The last line is machine-readable:
``http_c8_speedup=<samples/s at concurrency 8 over concurrency 1>``.

With a local model the speed-up comes from the server's batching: requests in flight together
are answered by one ``predict_batch`` call. A server that runs one request at a time would show
almost none (only the HTTP and image-encoding overlap).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from common import served

from model_interface.backends.openai_api import OpenAIModel
from model_interface.images import load_image
from model_interface.model_interface import PredictionRequest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DOCS = PROJECT_ROOT / "data" / "sample_docs"
CONCURRENCIES = (1, 4, 8)


def load_requests(count: int) -> list[PredictionRequest]:
    """``count`` requests from data/sample_docs, images decoded up front so that decoding files
    is not part of what is measured."""
    with (SAMPLE_DOCS / "annotation.csv").open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    images = {row["image_path"]: load_image(SAMPLE_DOCS / row["image_path"]) for row in rows}
    return [
        PredictionRequest([images[row["image_path"]]], row["question"])
        for row in itertools.islice(itertools.cycle(rows), count)
    ]


def samples_per_s(client: OpenAIModel, requests: list[PredictionRequest]) -> float:
    started = time.perf_counter()
    predictions = client.predict_batch(requests)
    elapsed = time.perf_counter() - started
    failed = [prediction.error for prediction in predictions if prediction.error]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(requests)} requests failed, e.g.: {failed[0]}")
    return len(requests) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny_qwen2_vl", help="a conf/model config name")
    parser.add_argument("--samples", type=int, default=32, help="requests per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per concurrency")
    args = parser.parse_args()

    requests = load_requests(args.samples)
    medians: dict[int, float] = {}
    with (
        tempfile.TemporaryDirectory() as workdir,
        served(args.model, Path(workdir)) as (base_url, _),
    ):
        for concurrency in CONCURRENCIES:
            # A long timeout: at concurrency 1 nothing queues, but at 8 a request may wait
            # behind a whole batch on a slow model. The server applies what a request asks
            # for: 16 new tokens, as the tiny model configs do in process.
            with OpenAIModel(
                base_url=base_url, concurrency=concurrency, timeout=300, max_new_tokens=16
            ) as client:
                samples_per_s(client, requests)  # warm-up: connections, first batches
                runs = [samples_per_s(client, requests) for _ in range(args.repeats)]
            medians[concurrency] = statistics.median(runs)
            print(f"  concurrency {concurrency}: {', '.join(f'{run:.2f}' for run in runs)}")

    baseline = medians[CONCURRENCIES[0]]
    print(f"\nOpenAIModel -> runners.serve model={args.model}, {args.samples} samples, median of")
    print(f"{args.repeats} runs; the server batches requests that are in flight together:")
    print(f"{'concurrency':>11}  {'samples/s':>9}  {'speed-up':>8}")
    for concurrency, value in medians.items():
        print(f"{concurrency:>11}  {value:>9.2f}  {value / baseline:>7.2f}x")
    print(f"http_c8_speedup={medians[8] / baseline:.2f}")


if __name__ == "__main__":
    main()
