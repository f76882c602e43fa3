"""The one wrapper around every command's Hydra job (run, evaluate, serve, merge): the same
exit codes, one line for an expected error, a traceback for a bug, and a failed job that
never ends a sweep.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from runners.config.paths import CONFIG_DIR
from runners.config.schema import register
from runners.errors import INTERRUPTED, INTERRUPTED_EXIT_CODE, RunnerError, one_line


class JobOutcome:
    """The exit status of a command's jobs (``run``, ``evaluate``, ``serve``). A job that meets
    a :class:`RunnerError` logs its one line and records its exit code here: raising
    ``SystemExit`` inside a Hydra job would skip Hydra's callbacks and end a sweep's other
    jobs. The command exits with the last code recorded."""

    def __init__(self) -> None:
        self.exit_status = 0

    def run(self, job: Callable[[], Any]) -> Any:
        """``job()``'s result, or None when it ended in a :class:`RunnerError`."""
        try:
            return job()
        except RunnerError as error:
            logging.getLogger("runners").error("%s", error)
            self.exit_status = error.exit_code
            return None


def hydra_main(config_name: str, job: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """A command's ``@hydra.main`` over ``job``, composing ``conf/<config_name>.yaml``. Made
    when the command starts, so that what its jobs share is held by the command (a closure),
    not by a module. The schemas the YAML files build on are registered first."""
    import hydra

    register()
    return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(job)


def run_hydra_command(main: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` function as a command, ending in one line on stderr instead of a
    traceback or Hydra's multi-line report: exit status 2 for a mistake in the command line or
    the config (or a SLURM cluster that refuses the jobs), 1 for an output directory that
    can't be written, 130 for Ctrl-C."""
    # Hydra re-raises rather than printing when HYDRA_FULL_ERROR is set; errors raised by the
    # task itself still show their traceback, as a bug should.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # A log file on a full disk must not add a traceback per log line to the one-line error.
    logging.raiseExceptions = False
    try:
        return main()
    except KeyboardInterrupt as interrupt:
        print(str(interrupt) or INTERRUPTED, file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    except (HydraException, OmegaConfBaseException) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:  # after Hydra's: its MissingConfigException is an OSError
        # Hydra makes the output directory and writes .hydra/ before the job starts.
        if not _raised_outside_the_job(error):
            raise
        print(f"error: {cannot_write_outputs(error)}", file=sys.stderr)
        raise SystemExit(1) from None
    except ValueError as error:
        if _raised_in(error, "logging.") and isinstance(error.__cause__, OSError):
            # Hydra's log file (run.log) in an output directory this process can't write.
            print(f"error: {cannot_write_outputs(error.__cause__)}", file=sys.stderr)
            raise SystemExit(1) from None
        if not _raised_in(error, "hydra."):
            raise
        print(f"error: {error}", file=sys.stderr)  # a command-line mistake, e.g. -m with --cfg
        raise SystemExit(2) from None
    except RuntimeError as error:
        # submitit refuses a machine without SLURM, or a cluster that does not answer, in a
        # traceback of 25 to 60 lines.
        if not _raised_in(error, "submitit."):
            raise
        print(f"error: {_slurm_refusal(error)}", file=sys.stderr)
        raise SystemExit(2) from None


def cannot_write_outputs(error: OSError) -> str:
    where = error.filename or "the output directory"
    return (
        f"cannot write {where}: {error.strerror or error}; run from a directory you can write, "
        "or choose the output directory with hydra.run.dir=... (hydra.sweep.dir=... for "
        "--multirun)"
    )


def _slurm_refusal(error: RuntimeError) -> str:
    if shutil.which("sbatch") is None:
        return SLURM_MISSING
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = lines[-1] if lines else type(error).__name__
    return (
        f"SLURM did not take the jobs ({said}); check that the cluster answers (sinfo), or "
        "pick a launcher for this machine: hydra/launcher=joblib (processes) or "
        "hydra/launcher=submitit_local"
    )


def _raised_outside_the_job(error: BaseException) -> bool:
    """Whether the error came from Hydra's own work around a job (making its output directory,
    saving its config), not from the job: no frame of the traceback runs the job's code."""
    traceback = error.__traceback__
    modules = []
    while traceback is not None:
        modules.append(traceback.tb_frame.f_globals.get("__name__", ""))
        traceback = traceback.tb_next
    inside_hydra = list(
        itertools.dropwhile(lambda module: not module.startswith("hydra."), modules)
    )
    return bool(inside_hydra) and not any(module.startswith("runners.") for module in inside_hydra)


SLURM_MISSING = (
    "the launcher submits the jobs to SLURM, which is not installed here (no sbatch on PATH); "
    "run the command on the cluster's login node, or pick a launcher for this machine: "
    "hydra/launcher=joblib (processes) or hydra/launcher=submitit_local"
)


def _raised_in(error: BaseException, module_prefix: str) -> bool:
    """Whether the innermost frame of the error's traceback is in a module of that prefix."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    module = traceback.tb_frame.f_globals.get("__name__", "") if traceback else ""
    return module.startswith(module_prefix)
