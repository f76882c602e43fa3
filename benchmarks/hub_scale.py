"""A parquet dataset with embedded images (the ``hf`` format) at two sizes: peak memory must not
grow with the split, as images are read from the table a cell at a time.

    python benchmarks/hub_scale.py [--sizes 5000 50000]

Each size is a parquet file of N rows, each with its own PNG (64x64 noise, ~12 KB, so the
file is ~N x 12 KB) in an ``Image`` column, run through ``python -m runners.run`` with the
dummy model (which decodes every image), batch 8, the default report; peak RSS is the whole
process's. The ``datasets`` library first converts the parquet into arrow files in its cache,
once per machine: that is measured apart (``prepare``: a run of one sample on a fresh cache),
then the whole run on the prepared split (``run``), as every later run finds it.

Goal (issue 21): the run's peak RSS at 50,000 samples <= 1.3x that at 5,000.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from common import measured_process, print_figures, print_table, scratch_dir
from PIL import Image


def parquet(folder: Path, n_samples: int) -> Path:
    """``n_samples`` rows of (id, question, answers, image), written in chunks so this script
    itself stays small."""
    import datasets
    import pyarrow.parquet

    features = datasets.Features(
        {
            "questionId": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": datasets.List(datasets.Value("string")),
            "image": datasets.Image(),
        }
    )
    rng = np.random.default_rng(0)
    path = folder / f"data_{n_samples}.parquet"
    writer = None
    for start in range(0, n_samples, 1000):
        rows = []
        for index in range(start, min(start + 1000, n_samples)):
            buffer = io.BytesIO()
            noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(noise).save(buffer, format="PNG")
            rows.append(
                {
                    "questionId": str(index),
                    "question": f"What is written in box {index}?",
                    "answers": [str(index)],
                    "image": {"bytes": buffer.getvalue(), "path": None},
                }
            )
        table = datasets.Dataset.from_list(rows, features=features).data.table
        if writer is None:
            writer = pyarrow.parquet.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return path


def run(file: Path, output_dir: Path, cache: Path, *extra: str) -> tuple[float, float]:
    return measured_process(
        [
            sys.executable,
            "-m",
            "runners.run",
            "model=dummy",
            "dataset=hf",
            "dataset.hf.path=parquet",
            f"dataset.hf.data_files=[{file}]",
            "dataset.hf.split=train",
            "dataset.hf.columns.id=questionId",
            "dataset.hf.columns.answers=answers",
            "runner.progress=false",
            f"hydra.run.dir={output_dir}",
            *extra,
        ],
        env={"HF_DATASETS_CACHE": str(cache), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50_000])
    args = parser.parse_args()

    work = scratch_dir("bench_hub_scale_")
    rows = []
    for size in args.sizes:
        file, cache = parquet(work, size), work / f"cache_{size}"
        _, prepare_mb = run(file, work / f"prepare_{size}", cache, "runner.limit=1")
        seconds, rss_mb = run(file, work / f"run_{size}", cache)
        rows.append((size, file.stat().st_size / 2**20, prepare_mb, size / seconds, rss_mb))
    print("\ndummy model, batch 8, one run per size")
    header = ["samples", "parquet_mb", "prepare_rss_mb", "samples_per_s", "run_rss_mb"]
    print_table(header, rows)
    print_figures(
        **{f"run_rss_mb_{size}": rss for size, *_, rss in rows},
        **{f"prepare_rss_mb_{size}": prepare for size, _, prepare, *_ in rows},
        run_rss_largest_over_smallest=rows[-1][4] / rows[0][4],
    )


if __name__ == "__main__":
    main()
