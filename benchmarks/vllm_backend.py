"""The vLLM backend against its limits, on the tiny Qwen2-VL (run it where vLLM is installed:
``bash scripts/vllm_cpu_env.sh``, then ``.vllm-venv/bin/python benchmarks/vllm_backend.py``).

    python benchmarks/vllm_backend.py [--samples 64] [--repeats 7]

Three ratios of answering-phase wall time (metrics.csv's ``wall_s``: from the first request to
the last answer written), each pair measured in this process, interleaved, ``--repeats`` times
after a warm-up; the figure is the median of the paired ratios:

* ``vllm_runner_over_bare``: the runner through ``model=vllm_tiny_qwen2_vl`` over a bare
  ``LLM.chat`` loop on the same engine, requests, batch size and settings, its images decoded
  beforehand (the limit: what a script without this project would do, minus reading files);
  ``vllm_runner_over_bare_reading_files``: the same loop reading its images from the files
  (each image once) within the timing, as such a script would;
* ``vllm_serve_over_in_process``: the runner through ``model=openai_compatible`` against
  vLLM's OpenAI-compatible server (the same engine options, started once, outside the timing)
  over the runner with the engine in process;
* ``hf_over_vllm_batch8``: the transformers backend over the vLLM backend, batch 8.

On a CPU these figures say what each layer costs there, not what a GPU would show.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as model=vllm_tiny_qwen2_vl

from common import (  # (after the engine setting: before vLLM is imported)
    STARTUP_TIMEOUT_S,
    compose_config,
    cycled_sample_docs,
    decoded_samples,
    free_port,
    median,
    print_figures,
    print_table,
    scratch_dir,
    serving,
    timed,
)

from model_interface.tiny import ensure_tiny_model
from runners.run import ModelCache, run_experiment

# One model for every run of the script, as the jobs of a sweep share it: runs time answering.
MODELS = ModelCache()

MAX_NEW_TOKENS = 16
BATCH = 8
KV_CACHE_BYTES = 512 * 2**20  # VLLMModel's default on a CPU


def bare_chat_loop(llm, samples, batch_size: int) -> None:
    """What a script without this project would do: ``LLM.chat`` on batches of conversations
    in dataset order, with the settings of model=vllm_tiny_qwen2_vl."""
    from vllm import SamplingParams

    sampling = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    for start in range(0, len(samples), batch_size):
        conversations = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_pil", "image_pil": image},
                        {"type": "text", "text": question},
                    ],
                }
            ]
            for image, question in samples[start : start + batch_size]
        ]
        llm.chat(conversations, sampling, use_tqdm=False)


def runners_engine():
    """The vLLM engine of the model the runner keeps between runs (as a sweep does), so that
    the bare loop runs on the very engine the runner used."""
    return MODELS.loaded.model.llm


def vllm_server_command(model_dir: Path, port: int) -> list[str]:
    """vLLM's OpenAI-compatible server with the engine options of model=vllm_tiny_qwen2_vl."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        "tiny-qwen2-vl",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(KV_CACHE_BYTES),
        "--limit-mm-per-prompt",
        '{"image": 4}',
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    work = scratch_dir("bench_vllm_")
    dataset = cycled_sample_docs(work / "data", args.samples)
    model_dir = ensure_tiny_model("tiny-qwen2-vl", work / "cache")
    common = [
        "dataset=vlmhyperbench",
        f"dataset.root={dataset}",
        f"runner.batch_size={BATCH}",
        f"paths.cache_dir={work / 'cache'}",
    ]
    port = free_port()
    server = serving(
        vllm_server_command(model_dir, port),
        port,
        work / "server.log",
        timeout_s=3 * STARTUP_TIMEOUT_S,
    )
    with server as (url, _):
        configs = {
            "vllm": compose_config("model=vllm_tiny_qwen2_vl", *common),
            "served": compose_config(
                "model=openai_compatible",
                f"model.init_params.base_url={url}",
                f"model.init_params.max_new_tokens={MAX_NEW_TOKENS}",
                f"model.init_params.concurrency={BATCH}",
                *common,
            ),
            "hf": compose_config(
                "model=tiny_qwen2_vl", f"model.init_params.max_new_tokens={MAX_NEW_TOKENS}", *common
            ),
        }
        runs = iter(range(10**6))

        def runner(kind: str) -> float:
            """The answering phase of one run: metrics.csv's wall_s."""
            row = run_experiment(configs[kind], work / "out" / f"{kind}_{next(runs)}", MODELS)
            return row["wall_s"]

        samples = decoded_samples(dataset)
        times: dict[str, list[float]] = {
            kind: [] for kind in ("bare", "bare_reading_files", "vllm", "served", "hf")
        }
        for repeat in range(args.repeats + 1):  # the first round warms up, and is dropped
            # Switching kinds reloads the runner's model (outside wall_s); the run right after
            # a load pays first-call costs, so each kind runs twice and the second one counts.
            round_times = {"vllm": [runner("vllm") for _ in range(2)][-1]}
            round_times["bare"] = timed(lambda: bare_chat_loop(runners_engine(), samples, BATCH))
            round_times["bare_reading_files"] = timed(
                lambda: bare_chat_loop(runners_engine(), decoded_samples(dataset), BATCH)
            )
            round_times["served"] = [runner("served") for _ in range(2)][-1]
            round_times["hf"] = [runner("hf") for _ in range(2)][-1]
            if repeat:
                for kind, seconds in round_times.items():
                    times[kind].append(seconds)

    def ratio(a: str, b: str) -> float:
        return median([x / y for x, y in zip(times[a], times[b], strict=True)])

    figures = {
        "vllm_runner_over_bare": ratio("vllm", "bare"),
        "vllm_runner_over_bare_reading_files": ratio("vllm", "bare_reading_files"),
        "vllm_serve_over_in_process": ratio("served", "vllm"),
        "hf_over_vllm_batch8": ratio("hf", "vllm"),
    }
    print(
        f"\n{args.samples} requests, batch {BATCH}, max_new_tokens {MAX_NEW_TOKENS}, greedy, "
        f"float32, on the CPU; median of {args.repeats} rounds"
    )
    print_table(["run", "answering_s"], [[kind, median(values)] for kind, values in times.items()])
    print_figures(**figures)


if __name__ == "__main__":
    main()
