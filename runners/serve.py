"""Serve a model config over an OpenAI-compatible HTTP API:
``python -m runners.serve model=<config> serve.port=8000`` (``vlm-serve``).

The model is loaded as a run loads it; the app, its endpoints, limits and batching are
:mod:`model_interface.server`'s. Settings: ``serve.*`` in conf/serve.yaml
(:class:`runners.config.schema.ServeConfig`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys

from omegaconf import DictConfig

from model_interface.server import INSTALL_HINT, create_app, require_fastapi, uvicorn_limits
from runners.config.job import JobOutcome, hydra_main, run_hydra_command
from runners.config.schema import ServeAppConfig, model_config, to_settings
from runners.errors import RunnerError
from runners.run import load_model

log = logging.getLogger("runners.serve")


def serve(cfg: DictConfig) -> None:
    """Load the configured model and serve it until interrupted."""
    require_fastapi()
    try:
        import uvicorn
    except ImportError as error:
        raise ImportError(
            f"runners.serve needs uvicorn ({error}); install it with: {INSTALL_HINT}"
        ) from None

    settings = to_settings(cfg, ServeAppConfig)
    settings.model = model_config(settings.model)
    options = settings.serve
    served_name = (
        options.served_model_name
        or (settings.model.get("init_params") or {}).get("model_name")
        or settings.model.get("name")
    )
    api_key = _api_key(options.api_key_env)
    if api_key is None and not _is_loopback(options.host):
        log.warning(
            "serving on %s without an API key: anyone who can reach this address can use the "
            "model; set serve.api_key_env=NAME to require the key in $NAME",
            options.host,
        )
    loaded = load_model(settings.model)
    app = create_app(
        loaded.model,
        str(served_name),
        max_batch_size=options.max_batch_size,
        batch_wait_s=options.batch_wait_ms / 1000,
        batch_fill_s=options.batch_fill_ms / 1000,
        limits=options.limits,
        api_key=api_key,
        docs=options.docs,
    )
    log.info("serving %s on http://%s:%d", served_name, options.host, options.port)
    try:
        # log_config=None: uvicorn's loggers go through Hydra's logging (console and serve.log).
        uvicorn.run(
            app,
            host=options.host,
            port=options.port,
            log_config=None,
            **uvicorn_limits(options.max_connections),
        )
    finally:
        loaded.model.close()


def _api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key:
        raise RunnerError(
            f"serve.api_key_env={variable}, but the environment variable {variable} is not set "
            f"or empty; export {variable}=<the key clients must send>"
        )
    return key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _serve_or_say_why(cfg: DictConfig) -> None:
    try:
        serve(cfg)
    except ImportError as error:  # the serve extra not installed, or the model's framework
        raise RunnerError(str(error)) from None


def cli() -> None:
    """``python -m runners.serve`` and the ``vlm-serve`` command."""
    outcome = JobOutcome()
    run_hydra_command(hydra_main("serve", lambda cfg: outcome.run(lambda: _serve_or_say_why(cfg))))
    sys.exit(outcome.exit_status)


if __name__ == "__main__":
    cli()
