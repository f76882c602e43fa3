"""The bare baseline as a whole process: what a hand-written script does for the same job.

    python benchmarks/bare_script.py <model_dir> <dataset_root> <output.csv> [--batch-size 8]

Imports torch and transformers, loads the model, decodes the dataset's images, runs the bare
loop (``common.bare_loop``) and writes one CSV of answers. benchmarks/startup.py times it as a
whole process next to ``python -m runners.run`` on the same data.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from common import bare_loop, decoded_samples, load_bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("dataset_root", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    processor, model = load_bare(args.model_dir)
    samples = decoded_samples(args.dataset_root)
    answers = bare_loop(processor, model, samples, args.batch_size)
    with args.output.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(enumerate(answers))


if __name__ == "__main__":
    main()
