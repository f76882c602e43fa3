"""SGLang backend: a VLM run in-process by ``sglang.Engine``, each batch sent as one ``generate``
call so that SGLang's scheduler batches it.

The prompt text comes from the model's own chat template (its Hugging Face processor); the
images go alongside as PIL pictures in ``image_data``, one list per prompt, in order.

API followed: SGLang 0.5.23, read in its source (``srt/entrypoints/engine.py``,
``srt/managers/io_struct.py``, ``srt/sampling/sampling_params.py``, ``srt/utils/common.py``):
``Engine(**ServerArgs)``, ``generate(prompt=[...], image_data=[[...], ...],
sampling_params={...})`` returns one dict per prompt, in order, with ``text`` and
``meta_info["prompt_tokens" / "completion_tokens"]``; ``load_image`` takes PIL images, paths,
URLs, bytes and base64 strings; ``shutdown()`` stops the engine's processes. sglang is imported
only when a model is created, so this module imports without it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from model_interface.cache import resolve_model
from model_interface.chat import template_messages
from model_interface.images import load_image
from model_interface.model_interface import (
    GenerationSettings,
    ModelInterface,
    Prediction,
    PredictionRequest,
    UnsupportedRequest,
    prompt_opens_reasoning,
)

INSTALL_HINT = "pip install 'model-interface[sglang]'"


class SGLangModel(ModelInterface):
    """A vision-language model run by SGLang on CUDA GPUs.

    Args:
        model_name: a hub repo id (``Qwen/Qwen2.5-VL-7B-Instruct``), a local directory, or a tiny
            offline model name (``tiny-qwen2-vl``).
        system_prompt: sent as the system message when non-empty.
        cache_dir: where weights are downloaded to and loaded from.
        tensor_parallel_size: number of GPUs to shard the model over (SGLang's ``tp_size``).
        mem_fraction_static: share of GPU memory for weights + KV cache; ``None`` lets SGLang pick.
        max_model_len: context length (SGLang's ``context_length``); ``None`` takes the model's.
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        trust_remote_code: allow the model repo's own Python code to run. Off by default.
        revision: hub revision (branch, tag or commit) to load.
        engine_kwargs: further ``sglang.Engine`` arguments (``disable_cuda_graph``,
            ``attention_backend``, ...); they override the options above.
        **generation: ``max_new_tokens``, ``temperature``, ... (see ``GenerationSettings``).
            ``seed`` seeds the engine (``random_seed``); ``generation_kwargs`` go into the
            sampling parameters as they are (``stop``, ``sampling_seed``, ...).
    """

    framework = "SGLang"

    def __init__(
        self,
        model_name: str,
        system_prompt: str = "",
        cache_dir: str = "model_cache",
        *,
        tensor_parallel_size: int = 1,
        mem_fraction_static: float | None = None,
        max_model_len: int | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        revision: str | None = None,
        engine_kwargs: Mapping[str, Any] | None = None,
        **generation: Any,
    ) -> None:
        super().__init__(model_name, system_prompt, cache_dir, **generation)
        sglang = _import_sglang()
        import transformers

        resolved = resolve_model(model_name, cache_dir, revision=revision)
        self.cache_hit, self.random_weights = resolved.cache_hit, resolved.random_weights
        self.model_path = resolved.path
        self.processor = transformers.AutoProcessor.from_pretrained(
            resolved.path, trust_remote_code=trust_remote_code
        )
        self.engine = sglang.Engine(
            **engine_options(
                resolved.path,
                self.cache_dir,
                tensor_parallel_size=tensor_parallel_size,
                mem_fraction_static=mem_fraction_static,
                max_model_len=max_model_len,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                seed=self.generation.seed,
                engine_kwargs=engine_kwargs,
            )
        )

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        if not requests:
            return []
        if self.engine is None:
            raise RuntimeError(f"{self!r} is closed")
        prompts = [prompt_text(self.processor, self.system_prompt, request) for request in requests]
        outputs = self.engine.generate(
            prompt=prompts,
            image_data=image_data(requests),
            sampling_params=[
                sampling_params(self.settings_for(request), self.generation.seed)
                for request in requests
            ],
        )
        opens = [
            prompt_opens_reasoning(prompt, self.settings_for(request).reasoning_markers)
            for prompt, request in zip(prompts, requests, strict=True)
        ]
        return predictions_from_outputs(outputs, opens)

    def close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            # Blocks until the scheduler process has released the GPU.
            engine.shutdown()


def prompt_text(processor: Any, system_prompt: str, request: PredictionRequest) -> str:
    """The prompt string for one request, rendered by the model's own chat template."""
    return processor.apply_chat_template(
        template_messages(system_prompt, request), tokenize=False, add_generation_prompt=True
    )


def image_data(requests: Sequence[PredictionRequest]) -> list[list[Any]] | None:
    """SGLang's batched ``image_data``: one list of PIL images per request, in order (an empty
    list for a request without images), or ``None`` when no request has any."""
    if not any(request.images for request in requests):
        return None
    return [[load_image(image) for image in request.images] for request in requests]


def sampling_params(settings: GenerationSettings, engine_seed: int | None = None) -> dict[str, Any]:
    """SGLang's ``sampling_params`` dict. SGLang decodes greedily at temperature 0; ``seed``
    seeds the engine instead (see ``engine_options``), so a request can't have its own."""
    params = settings.sampling_options(max_tokens_key="max_new_tokens")
    if settings.json_schema is not None:
        params["json_schema"] = json.dumps(settings.json_schema)
    seed = params.pop("seed", None)
    if seed != engine_seed:
        raise UnsupportedRequest(
            f"SGLang seeds the engine, not a request: this request's seed={seed} differs from "
            f"the model's seed={engine_seed}"
        )
    return params


def engine_options(
    model_path: str,
    cache_dir: str,
    *,
    tensor_parallel_size: int = 1,
    mem_fraction_static: float | None = None,
    max_model_len: int | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    seed: int | None = None,
    engine_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``sglang.Engine``; ``None`` options are left to SGLang's defaults.

    A per-request seed (``sampling_seed``) exists only in newer SGLang and needs
    ``enable_deterministic_inference``, so ``seed`` seeds the engine instead.
    """
    options: dict[str, Any] = {
        "model_path": model_path,
        "download_dir": cache_dir,
        "tp_size": tensor_parallel_size,
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
    }
    if mem_fraction_static is not None:
        options["mem_fraction_static"] = mem_fraction_static
    if max_model_len is not None:
        options["context_length"] = max_model_len
    if seed is not None:
        options["random_seed"] = seed
    options.update(engine_kwargs or {})
    return options


def predictions_from_outputs(
    outputs: Sequence[Mapping[str, Any]], prompts_open_reasoning: Sequence[bool]
) -> list[Prediction]:
    """One :class:`Prediction` per ``Engine.generate`` output dict, in the same order."""
    return [
        Prediction(
            output["text"].strip(),
            prompt_tokens=output["meta_info"].get("prompt_tokens"),
            completion_tokens=output["meta_info"].get("completion_tokens"),
            prompt_opens_reasoning=opens,
        )
        for output, opens in zip(outputs, prompts_open_reasoning, strict=True)
    ]


def _import_sglang() -> Any:
    try:
        import sglang
    except ImportError as error:
        raise ImportError(
            f"the SGLang backend needs the sglang package ({error}); install it with: "
            f"{INSTALL_HINT} (SGLang runs on a CUDA GPU)"
        ) from error
    return sglang
