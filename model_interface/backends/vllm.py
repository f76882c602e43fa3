"""vLLM backend: a VLM run in-process by ``vllm.LLM``, each batch submitted in one call so that
vLLM's continuous batching schedules it.

The prompt comes from the model's own chat template (``LLM.chat``). Images are handed over as PIL
pictures (``image_pil`` content parts), so nothing is PNG-encoded only to be decoded again.

API followed: vLLM 0.11.0 and 0.33.0, read in both releases' sources (``vllm/entrypoints/llm.py``,
``chat_utils.py``, ``sampling_params.py``, ``distributed/parallel_state.py``): ``LLM.chat`` takes a
list of conversations and returns one ``RequestOutput`` per conversation, in order; ``image_pil``
parts exist since vLLM 0.10 (PR #19635). vllm is imported only when a model is created, so this
module imports (and its request building can be tested) without it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from model_interface.cache import resolve_model
from model_interface.chat import openai_messages
from model_interface.images import load_image
from model_interface.model_interface import (
    GenerationSettings,
    ModelInterface,
    Prediction,
    PredictionRequest,
    predict_in_groups,
    prompt_opens_reasoning,
)
from model_interface.schema import grammar_schema

INSTALL_HINT = "pip install 'model-interface[vllm]'"


# vLLM's defaults for memory are a share of the device's: on a CPU that share is of the
# host's RAM, and 90% of it fails to start. There the KV cache gets a size of its own.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
DEFAULT_CPU_KV_CACHE_BYTES = 512 * 2**20


class VLLMModel(ModelInterface):
    """A vision-language model run by vLLM, on CUDA GPUs or (with vLLM's CPU build) the CPU.

    Args:
        model_name: a hub repo id (``Qwen/Qwen2.5-VL-7B-Instruct``), a local directory, or a tiny
            offline model name (``tiny-qwen2-vl``).
        system_prompt: sent as the system message when non-empty.
        cache_dir: where weights are downloaded to and loaded from.
        tensor_parallel_size: number of GPUs to shard the model over.
        gpu_memory_utilization: share of each GPU's memory vLLM may take (weights + KV cache);
            ``None``: 0.9 on a GPU. Not used on the CPU unless given.
        kv_cache_memory_bytes: the KV cache's size, instead of a share of memory; ``None``:
            512 MiB on the CPU, vLLM's share on a GPU.
        multiprocessing: run the engine core in a process of its own (vLLM's default) or, with
            ``False``, in this one: it starts in seconds instead of most of a minute on a CPU,
            and answers the same. ``None`` leaves it to vLLM (``VLLM_ENABLE_V1_MULTIPROCESSING``).
        max_model_len: context length (prompt + answer); ``None`` takes the model's own.
        limit_mm_per_prompt: most items per modality in one prompt, e.g. ``{"image": 4}``.
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        trust_remote_code: allow the model repo's own Python code to run. Off by default.
        revision: hub revision (branch, tag or commit) to load.
        engine_kwargs: further ``vllm.LLM`` arguments (``enforce_eager``, ``max_num_seqs``, ...);
            they override the options above.
        **generation: ``max_new_tokens``, ``temperature``, ... (see ``GenerationSettings``);
            ``generation_kwargs`` go to ``vllm.SamplingParams`` as they are (``stop``, ...).
    """

    framework = "vLLM"

    def __init__(
        self,
        model_name: str,
        system_prompt: str = "",
        cache_dir: str = "model_cache",
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        kv_cache_memory_bytes: int | None = None,
        multiprocessing: bool | None = None,
        max_model_len: int | None = None,
        limit_mm_per_prompt: Mapping[str, int] | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        revision: str | None = None,
        engine_kwargs: Mapping[str, Any] | None = None,
        **generation: Any,
    ) -> None:
        super().__init__(model_name, system_prompt, cache_dir, **generation)
        vllm = _import_vllm()
        resolved = resolve_model(model_name, cache_dir, revision=revision)
        self.cache_hit, self.random_weights = resolved.cache_hit, resolved.random_weights
        self.model_path = resolved.path
        self.device = _device()
        options = engine_options(
            resolved.path,
            self.cache_dir,
            tensor_parallel_size=tensor_parallel_size,
            **memory_options(self.device, gpu_memory_utilization, kv_cache_memory_bytes),
            max_model_len=max_model_len,
            limit_mm_per_prompt=limit_mm_per_prompt,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            engine_kwargs={
                **structured_outputs_config(_sampling_params()),
                **(engine_kwargs or {}),
            },
        )
        self.llm = None
        try:
            with _engine_processes(multiprocessing):
                self.llm = vllm.LLM(**options)
        except Exception as error:  # vLLM says why in many ways; the run needs one line
            raise RuntimeError(start_failure(model_name, self.device, options, error)) from error

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        if not requests:
            return []
        if self.llm is None:
            raise RuntimeError(f"{self!r} is closed")
        # One call per set of chat-template options: vLLM takes one set per call.
        return predict_in_groups(
            requests,
            lambda request: json.dumps(self._template_options(request), sort_keys=True),
            self._chat,
        )

    def _chat(self, requests: list[PredictionRequest]) -> list[Prediction]:
        """One engine call for requests that share their chat-template options."""
        outputs = self.llm.chat(
            [conversation(self.system_prompt, request) for request in requests],
            self._sampling_params(requests),
            use_tqdm=False,
            chat_template_kwargs=self._template_options(requests[0]) or None,
        )
        markers = [self.settings_for(request).reasoning_markers for request in requests]
        return predictions_from_outputs(outputs, markers)

    def _template_options(self, request: PredictionRequest) -> dict[str, Any]:
        return self.settings_for(request).chat_template_kwargs

    def _sampling_params(self, requests: Sequence[PredictionRequest]) -> Any:
        """The model's SamplingParams, or one per request where a request has its own."""
        if all(self.settings_for(request) == self.generation for request in requests):
            return self.sampling_params
        vllm = _import_vllm()
        return [vllm.SamplingParams(**options) for options in sampling_options(self, requests)]

    @property
    def sampling_params(self) -> Any:
        """The SamplingParams of the model's own settings."""
        vllm = _import_vllm()
        return vllm.SamplingParams(**options_for(self.generation, _sampling_params()))

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        # vLLM's own teardown, as its tests do it: stop the engine-core process, drop the engine;
        # cleanup_dist_env_and_memory then destroys the distributed groups, collects garbage and
        # empties the CUDA cache.
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        del llm, engine_core
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()


def conversation(system_prompt: str, request: PredictionRequest) -> list[dict[str, Any]]:
    """The OpenAI-format messages for one request, images as PIL ``image_pil`` parts."""
    return openai_messages(system_prompt, request, image_part=_pil_part)


def _pil_part(image: Any) -> dict[str, Any]:
    return {"type": "image_pil", "image_pil": load_image(image)}


def memory_options(
    device: str, gpu_memory_utilization: float | None, kv_cache_memory_bytes: int | None
) -> dict[str, Any]:
    """What memory the engine may take on ``device`` ("cpu" or "gpu"): a KV-cache size on the
    CPU, a share of GPU memory on a GPU, unless told otherwise."""
    if gpu_memory_utilization is None and kv_cache_memory_bytes is None:
        if device == "cpu":
            kv_cache_memory_bytes = DEFAULT_CPU_KV_CACHE_BYTES
        else:
            gpu_memory_utilization = DEFAULT_GPU_MEMORY_UTILIZATION
    return {
        "gpu_memory_utilization": gpu_memory_utilization,
        "kv_cache_memory_bytes": kv_cache_memory_bytes,
    }


def start_failure(
    model_name: str, device: str, options: Mapping[str, Any], error: Exception
) -> str:
    """One line saying why vLLM did not start ``model_name`` and what to set instead."""
    # The last line that says something (pydantic ends with a link to its documentation).
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith("For further information")]
    said = f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__
    context = options.get("max_model_len", "the model's own")
    if device == "cpu":
        hint = (
            f"if it is memory: on the CPU the KV cache takes kv_cache_memory_bytes "
            f"({options.get('kv_cache_memory_bytes')}) of the host's memory and must hold "
            f"max_model_len ({context}) tokens: lower max_model_len or raise "
            "kv_cache_memory_bytes; vLLM's CPU attention takes head sizes of 32, 64, 80, ... only"
        )
    else:
        hint = (
            f"if it is memory: lower gpu_memory_utilization "
            f"({options.get('gpu_memory_utilization')}) or "
            f"max_model_len ({context}), or free the GPU (nvidia-smi shows who holds it)"
        )
    return f"vLLM could not start {model_name} on the {device} ({said}); {hint}"


@contextlib.contextmanager
def _engine_processes(multiprocessing: bool | None) -> Iterator[None]:
    """vLLM reads ``VLLM_ENABLE_V1_MULTIPROCESSING`` when an engine starts: set it for this
    engine's start only, so that it does not leak into the next."""
    if multiprocessing is None:
        yield
        return
    name = "VLLM_ENABLE_V1_MULTIPROCESSING"
    before = os.environ.get(name)
    os.environ[name] = "1" if multiprocessing else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def engine_options(
    model_path: str,
    cache_dir: str,
    *,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float | None = None,
    kv_cache_memory_bytes: int | None = None,
    max_model_len: int | None = None,
    limit_mm_per_prompt: Mapping[str, int] | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    engine_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``; ``None`` options are left to vLLM's defaults."""
    options: dict[str, Any] = {
        "model": model_path,
        "download_dir": cache_dir,
        "tensor_parallel_size": tensor_parallel_size,
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
    }
    if gpu_memory_utilization is not None:
        options["gpu_memory_utilization"] = gpu_memory_utilization
    if kv_cache_memory_bytes is not None:
        options["kv_cache_memory_bytes"] = kv_cache_memory_bytes
    if max_model_len is not None:
        options["max_model_len"] = max_model_len
    if limit_mm_per_prompt is not None:
        options["limit_mm_per_prompt"] = limit_mm_per_prompt
    options.update(engine_kwargs or {})
    return options


def structured_outputs_config(sampling_params: Any) -> dict[str, Any]:
    """Engine options that make vLLM's structured outputs write what the Hugging Face backend
    writes: xgrammar, with no optional whitespace (vLLM >= 0.10.2; none before)."""
    if not hasattr(sampling_params, "StructuredOutputsParams"):
        return {}
    return {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}


def sampling_options(model: ModelInterface, requests: Sequence[PredictionRequest]) -> list[dict]:
    """``vllm.SamplingParams`` keyword arguments for each request (its own settings applied)."""
    return [options_for(model.settings_for(request)) for request in requests]


def options_for(settings: GenerationSettings, sampling_params: Any = None) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for ``settings``. A JSON Schema goes to
    vLLM's structured outputs: ``structured_outputs=StructuredOutputsParams(json=...)`` in
    vLLM >= 0.10.2, ``guided_decoding=GuidedDecodingParams(json=...)`` before;
    ``sampling_params`` is the ``vllm.sampling_params`` module that says which (imported when
    a schema needs it)."""
    options = settings.sampling_options()
    if settings.json_schema is not None:
        sampling_params = sampling_params or _sampling_params()
        # As the Hugging Face backend compiles it: strings without raw control characters, and
        # no optional whitespace (vLLM's default admits any, which a random model fills; since
        # vLLM 0.10.2 that is set for the engine, structured_outputs_config).
        schema = grammar_schema(dict(settings.json_schema))
        if hasattr(sampling_params, "StructuredOutputsParams"):  # whitespace: the engine's
            options["structured_outputs"] = sampling_params.StructuredOutputsParams(json=schema)
        else:
            options["guided_decoding"] = sampling_params.GuidedDecodingParams(
                json=schema, disable_any_whitespace=True
            )
    return options


def predictions_from_outputs(
    outputs: Sequence[Any], reasoning_markers: Sequence[Sequence[str] | None]
) -> list[Prediction]:
    """One :class:`Prediction` per ``vllm.RequestOutput``, in the same order; each request's
    reasoning markers tell whether its rendered prompt opened a reasoning block."""
    predictions = []
    for output, markers in zip(outputs, reasoning_markers, strict=True):
        completion = output.outputs[0]
        prompt_ids = output.prompt_token_ids
        predictions.append(
            Prediction(
                completion.text.strip(),
                prompt_tokens=None if prompt_ids is None else len(prompt_ids),
                completion_tokens=len(completion.token_ids),
                token_ids=tuple(completion.token_ids),
                prompt_opens_reasoning=prompt_opens_reasoning(output.prompt, markers),
            )
        )
    return predictions


def _sampling_params() -> Any:
    """The ``vllm.sampling_params`` module (its classes differ between vLLM releases)."""
    import vllm.sampling_params

    return vllm.sampling_params


def _device() -> str:
    """Where vLLM runs its engines: "cpu" with its CPU build, else "gpu"."""
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else "gpu"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as error:
        raise ImportError(
            f"the vLLM backend needs the vllm package ({error}); install it with: {INSTALL_HINT} "
            "on a CUDA GPU, or see README's 'vLLM on the CPU' for its CPU build"
        ) from error
    return vllm
