"""Hugging Face transformers backend: any chat-template VLM that ``AutoModelForImageTextToText``
loads, batched for real (left padding, one ``generate`` per batch).

Nothing here is specific to a model family: the prompt comes from the model's own chat template
and the inputs from its own processor. Family options (e.g. Qwen's ``min_pixels`` /
``max_pixels``) go through ``processor_kwargs``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
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
    predict_in_groups,
    prompt_opens_reasoning,
)
from model_interface.schema import GRAMMAR_WHITESPACE, grammar_schema

try:
    import torch
    import transformers
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the Hugging Face backend needs torch and transformers ({error}); "
        "install them with: pip install 'model-interface[hf]'"
    ) from error

log = logging.getLogger(__name__)

DTYPES = {
    "auto": "auto",
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
ATTENTION_FALLBACK = ("flash_attention_2", "sdpa", "eager")


class HFModel(ModelInterface):
    """A vision-language model run by Hugging Face transformers.

    Args:
        model_name: a hub repo id (``Qwen/Qwen2-VL-2B-Instruct``), a local directory, or a tiny
            offline model name (``tiny-qwen2-vl``).
        system_prompt: sent as the system message when non-empty.
        cache_dir: where weights are downloaded to and loaded from.
        dtype: ``auto`` (the checkpoint's), ``bfloat16``, ``float16`` or ``float32``.
        device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
        device_map: passed to ``from_pretrained`` instead of ``device`` (e.g. ``auto`` to shard
            a large model over several GPUs; needs ``accelerate``).
        attn_implementation: ``flash_attention_2``, ``sdpa`` or ``eager``; by default the first
            of those that is installed and that the model supports.
        processor_kwargs: passed to ``AutoProcessor.from_pretrained``.
        revision: hub revision (branch, tag or commit) to load.
        trust_remote_code: allow the model repo's own Python code to run. Off by default.
        **generation: ``max_new_tokens``, ``temperature``, ... (see ``GenerationSettings``).
    """

    framework = "Hugging Face"

    def __init__(
        self,
        model_name: str,
        system_prompt: str = "",
        cache_dir: str = "model_cache",
        *,
        dtype: str = "auto",
        device: str = "auto",
        device_map: str | dict[str, Any] | None = None,
        attn_implementation: str | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        **generation: Any,
    ) -> None:
        super().__init__(model_name, system_prompt, cache_dir, **generation)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.device = _pick_device(device) if device_map is None else None
        resolved = resolve_model(model_name, cache_dir, revision=revision)
        self.cache_hit, self.random_weights = resolved.cache_hit, resolved.random_weights
        self.model_path = resolved.path

        self.processor = transformers.AutoProcessor.from_pretrained(
            resolved.path, trust_remote_code=trust_remote_code, **(processor_kwargs or {})
        )
        # Batched generation appends new tokens on the right, so prompts are padded on the left.
        self.processor.tokenizer.padding_side = "left"
        load_options: dict[str, Any] = {
            "dtype": DTYPES[dtype],
            "trust_remote_code": trust_remote_code,
        }
        if device_map is not None:
            load_options["device_map"] = device_map
        on_cuda = torch.cuda.is_available() if self.device is None else "cuda" in self.device
        self.model, self.attn_implementation = _load_with_attention_fallback(
            resolved.path, load_options, attn_implementation, on_cuda=on_cuda
        )
        if self.device is not None:
            self.model.to(self.device)
        self.model.eval()
        self._grammar_compiler: Any = None  # made on the first constrained request
        self._grammars: dict[str, Any] = {}  # compiled JSON Schemas, by schema

    def predict_batch(self, requests: Sequence[PredictionRequest]) -> list[Prediction]:
        # One generate call per group of requests that can share it: the same generation
        # settings, and images for every prompt or for none (a processor takes one or the other).
        return predict_in_groups(
            requests,
            lambda request: (bool(request.images), _settings_key(self.settings_for(request))),
            lambda batch: self._generate(batch, bool(batch[0].images), self.settings_for(batch[0])),
        )

    def _generate(
        self,
        requests: Sequence[PredictionRequest],
        with_images: bool,
        settings: GenerationSettings,
    ) -> list[Prediction]:
        texts = [
            self.processor.apply_chat_template(
                template_messages(self.system_prompt, request),
                tokenize=False,
                add_generation_prompt=True,
                **settings.chat_template_kwargs,
            )
            for request in requests
        ]
        # A template that writes the BOS token itself must not get a second one from the
        # tokenizer (the rule transformers' own apply_chat_template(tokenize=True) follows).
        bos = self.processor.tokenizer.bos_token
        add_special_tokens = not (bos and texts[0].startswith(bos))
        options: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if with_images:
            options["images"] = [[load_image(image) for image in r.images] for r in requests]
        try:
            inputs = self.processor(add_special_tokens=add_special_tokens, **options)
        except (ValueError, TypeError, IndexError) as error:
            if with_images:
                raise
            raise UnsupportedRequest(
                f"{self.model_name}'s processor can't take a request without an image "
                f"({type(error).__name__}: {error}); send at least one image"
            ) from error
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)

        if not settings.greedy and settings.seed is not None:
            torch.manual_seed(settings.seed)
        options = self._generation_options(settings)
        if settings.stop:
            # transformers stops a row once its text ends with a stop string; the tokenizer
            # lets it read the text.
            options.update(stop_strings=list(settings.stop), tokenizer=self.processor.tokenizer)
        if settings.json_schema is not None:
            options["logits_processor"] = [self._json_constraint(settings.json_schema)]
        with torch.inference_mode():
            output = self.model.generate(**inputs, **options)

        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = output[:, prompt_length:]
        texts_out = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        generated = [self._generated(row) for row in new_tokens]
        image_sizes = self._image_sizes(inputs, [len(r.images) for r in requests])
        markers = settings.reasoning_markers
        thinking_end = (
            None
            if markers is None
            else self.processor.tokenizer.encode(markers[1], add_special_tokens=False)
        )
        return [
            Prediction(
                # Stopped by the token limit inside a multi-byte character, the text ends in
                # U+FFFD: left out, as vLLM's detokenizer leaves out a character not finished.
                settings.cut_at_stop(text.rstrip("\ufffd")).strip(),
                prompt_tokens=int(prompt_tokens[row]),
                completion_tokens=len(generated[row]),
                token_ids=tuple(generated[row]),
                image_sizes=image_sizes[row] if image_sizes else None,
                reasoning_tokens=_thinking_tokens(generated[row], thinking_end),
                prompt_opens_reasoning=prompt_opens_reasoning(texts[row], markers),
            )
            for row, text in enumerate(texts_out)
        ]

    def _image_sizes(
        self, inputs: Mapping[str, Any], counts: Sequence[int]
    ) -> list[tuple[tuple[int, int], ...]] | None:
        """Each request's images as the processor resized them, (width, height): from the patch
        grid of processors that tile by patches (Qwen-VL's ``image_grid_thw``), or the pixel
        arrays of those that make one picture per image; None for those that cut an image into
        a varying number of crops (Idefics3, SmolVLM), where no one size says what was seen."""
        if not sum(counts):
            return None
        grid = inputs.get("image_grid_thw")
        if grid is not None:
            patch = int(getattr(self.processor.image_processor, "patch_size", 14))
            sizes = [(int(w) * patch, int(h) * patch) for _, h, w in grid.tolist()]
        else:
            pixels = inputs.get("pixel_values")
            if pixels is None or pixels.dim() != 4 or pixels.shape[0] != sum(counts):
                return None
            sizes = [(int(pixels.shape[3]), int(pixels.shape[2]))] * sum(counts)
        if len(sizes) != sum(counts):
            return None
        parts, start = [], 0
        for count in counts:
            parts.append(tuple(sizes[start : start + count]))
            start += count
        return parts

    def close(self) -> None:
        if getattr(self, "model", None) is None:
            return
        on_cuda = self.model.device.type == "cuda"
        self.model = None
        if on_cuda:
            torch.cuda.empty_cache()

    def _generation_options(self, settings: GenerationSettings) -> dict[str, Any]:
        options: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens}
        if settings.greedy:
            # Greedy decoding ignores sampling settings; clearing them avoids transformers'
            # warnings about a checkpoint's default temperature / top_p being unused.
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            options.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
            if settings.top_k is not None:
                options["top_k"] = settings.top_k
        if settings.repetition_penalty is not None:
            options["repetition_penalty"] = settings.repetition_penalty
        options["pad_token_id"] = self._pad_token_id()
        options.update(settings.generation_kwargs)
        return options

    def _json_constraint(self, schema: Mapping[str, Any]) -> Any:
        """A logits processor that keeps generation inside ``schema`` (xgrammar, the grammar
        engine vLLM and SGLang use); one per generate call, as it keeps each row's state."""
        try:
            import xgrammar
        except ImportError as error:
            raise UnsupportedRequest(
                f"constrained decoding with the Hugging Face backend needs xgrammar ({error}); "
                "install it with: pip install 'model-interface[hf]'"
            ) from None
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._grammar_compiler is None:
                vocab_size = self.model.get_output_embeddings().weight.shape[0]
                info = xgrammar.TokenizerInfo.from_huggingface(
                    self.processor.tokenizer, vocab_size=vocab_size
                )
                self._grammar_compiler = xgrammar.GrammarCompiler(info)
            self._grammars[key] = self._grammar_compiler.compile_json_schema(
                json.dumps(grammar_schema(schema)), **GRAMMAR_WHITESPACE
            )
        return xgrammar.contrib.hf.LogitsProcessor(self._grammars[key])

    def _pad_token_id(self) -> int | None:
        """What generate fills finished rows with: the checkpoint's, else the tokenizer's."""
        if self.model.generation_config.pad_token_id is not None:
            return self.model.generation_config.pad_token_id
        tokenizer = self.processor.tokenizer
        return (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )

    def _generated(self, tokens: torch.Tensor) -> list[int]:
        """The ids generated up to and including the first end-of-sequence token.

        A row that finished before the others (an end-of-sequence token, a stop string) is
        padded to the batch's length; padding is not generated text. Padding runs to the row's
        end, so a pad token the model wrote before other tokens stays in the answer (as vLLM
        keeps it).
        """
        stop_ids = self.model.generation_config.eos_token_id
        stop_ids = [stop_ids] if isinstance(stop_ids, int) else list(stop_ids or [])
        if stop_ids:
            stops = torch.isin(tokens, torch.tensor(stop_ids, device=tokens.device)).nonzero()
            if len(stops):
                return tokens[: int(stops[0, 0]) + 1].tolist()
        pad_id = self._pad_token_id()
        if pad_id is not None:
            written = (tokens != pad_id).nonzero()
            tokens = tokens[: int(written[-1, 0]) + 1 if len(written) else 0]
        return tokens.tolist()


def _thinking_tokens(generated: list[int], end: list[int] | None) -> int | None:
    """The tokens up to and including the end of a reasoning block (``end``: its end marker's
    tokens), if the answer has one."""
    if end is None:
        return None
    for start in range(len(generated) - len(end) + 1):
        if generated[start : start + len(end)] == end:
            return start + len(end)
    return None


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is available; use device=cpu")
    return device


def _load_with_attention_fallback(
    path: str, load_options: dict[str, Any], requested: str | None, *, on_cuda: bool
) -> tuple[Any, str]:
    """Load the model with the first attention implementation that works."""
    if requested is not None:
        candidates = [requested]
    else:
        candidates = [
            name
            for name in ATTENTION_FALLBACK
            if name != "flash_attention_2"
            or (on_cuda and importlib.util.find_spec("flash_attn") is not None)
        ]
    for index, name in enumerate(candidates):
        try:
            model = transformers.AutoModelForImageTextToText.from_pretrained(
                path, attn_implementation=name, **load_options
            )
            return model, name
        except (ValueError, ImportError) as error:
            if index == len(candidates) - 1:
                raise
            log.info("attn_implementation=%s unavailable (%s); trying the next", name, error)
    raise AssertionError("unreachable")


def _settings_key(settings: GenerationSettings) -> str:
    """A hashable stand-in for settings (``generation_kwargs`` is a dict)."""
    return json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)
