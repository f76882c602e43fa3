"""Merge the shards of a run by hand: ``python -m runners.merge RUN_DIR``.

The last shard to end merges the run by itself; this is for shards answered elsewhere (their
``shards/<i>-of-<n>/`` folders copied into one run directory) or a merge that failed. It
writes what a single run writes (runners/execution/shards.py) and exits 2, with one line, if
a shard is missing, unfinished or ran with another configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from runners.errors import RunnerError
from runners.execution.shards import merge_run_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.merge", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="the output directory the shards share")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s", datefmt="%H:%M:%S"
    )

    try:
        row = merge_run_dir(args.run_dir)
    except RunnerError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0 if row["status"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
