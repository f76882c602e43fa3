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

from collections.abc import Mapping, Sequence
from typing import Any

from model_interface.cache import resolve_model
from model_interface.chat import openai_messages
from model_interface.images import load_image
from model_interface.model_interface import (
    GenerationSettings,
    ModelInterface,
    Prediction,
    PredictionRequest,
)

INSTALL_HINT = "pip install 'model-interface[vllm]'"


class VLLMModel(ModelInterface):
    """A vision-language model run by vLLM on CUDA GPUs.

    Args:
        model_name: a hub repo id (``Qwen/Qwen2.5-VL-7B-Instruct``), a local directory, or a tiny
            offline model name (``tiny-qwen2-vl``).
        system_prompt: sent as the system message when non-empty.
        cache_dir: where weights are downloaded to and loaded from.
        tensor_parallel_size: number of GPUs to shard the model over.
        gpu_memory_utilization: share of each GPU's memory vLLM may take (weights + KV cache).
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
        gpu_memory_utilization: float = 0.9,
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
        self.llm = vllm.LLM(
            **engine_options(
                resolved.path,
                self.cache_dir,
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                limit_mm_per_prompt=limit_mm_per_prompt,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                engine_kwargs=engine_kwargs,
            )
        )

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        if not requests:
            return []
        if self.llm is None:
            raise RuntimeError(f"{self!r} is closed")
        conversations = [conversation(self.system_prompt, request) for request in requests]
        outputs = self.llm.chat(conversations, self._sampling_params(requests), use_tqdm=False)
        return predictions_from_outputs(outputs)

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
        return vllm.SamplingParams(**options_for(self.generation, vllm.sampling_params))

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


def engine_options(
    model_path: str,
    cache_dir: str,
    *,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
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
        "gpu_memory_utilization": gpu_memory_utilization,
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
    }
    if max_model_len is not None:
        options["max_model_len"] = max_model_len
    if limit_mm_per_prompt is not None:
        options["limit_mm_per_prompt"] = limit_mm_per_prompt
    options.update(engine_kwargs or {})
    return options


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
        sampling_params = sampling_params or _import_vllm().sampling_params
        schema = dict(settings.json_schema)
        if hasattr(sampling_params, "StructuredOutputsParams"):
            options["structured_outputs"] = sampling_params.StructuredOutputsParams(json=schema)
        else:
            options["guided_decoding"] = sampling_params.GuidedDecodingParams(json=schema)
    return options


def predictions_from_outputs(outputs: Sequence[Any]) -> list[Prediction]:
    """One :class:`Prediction` per ``vllm.RequestOutput``, in the same order."""
    predictions = []
    for output in outputs:
        completion = output.outputs[0]
        prompt_ids = output.prompt_token_ids
        predictions.append(
            Prediction(
                completion.text.strip(),
                prompt_tokens=None if prompt_ids is None else len(prompt_ids),
                completion_tokens=len(completion.token_ids),
            )
        )
    return predictions


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as error:
        raise ImportError(
            f"the vLLM backend needs the vllm package ({error}); install it with: {INSTALL_HINT} "
            "(vLLM runs on a CUDA GPU)"
        ) from error
    return vllm
