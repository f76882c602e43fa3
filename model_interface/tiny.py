"""Deterministic tiny random-weight vision-language models, built locally.

Each tiny model is a real transformers checkpoint directory (config, safetensors weights,
tokenizer, processor, chat template) of a real model family, about 1 MB, built with no network
in a tenth of a second (after the one-off import of torch and transformers).  Tests and the
offline default run use them where no hub download is possible.  They load through the
standard path::

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)

The weights are random, so the generated text is junk; but it is deterministic, it depends on
the images and on every part of the prompt, and batched generation equals one-by-one.

torch and transformers are imported inside the functions so that importing this module stays
cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

TINY_MODEL_NAMES: tuple[str, ...] = (
    "tiny-qwen2-vl",
    "tiny-qwen2.5-vl",
    "tiny-smolvlm",
    "tiny-idefics3",
    "tiny-llava",
    "tiny-gemma3",
    "tiny-qwen3-vl",
    "tiny-qwen3-vl-thinking",
    "tiny-internvl3",
)

# Bump to make ensure_tiny_model() rebuild every cached tiny model (e.g. after changing a config).
BUILDER_VERSION = 2
MARKER_FILE = "tiny_model_builder.json"

_SEED = 1234
# All families see 56x56 images as 4x4 patches of 14 px, merged or pooled to 4 tokens per image
# (LLaVA keeps all 16).  Tests use 56x56 images, which no processor resizes much.
_IMAGE_PX = 56
_PATCH_PX = 14
_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    # Two heads of 32: vLLM's CPU attention takes head sizes of 32, 64, 80, ..., not 16.
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 2048,
}
_HEAD_DIM = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]
_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": _IMAGE_PX,
    "patch_size": _PATCH_PX,
}
# Random models rarely emit EOS; a default cap keeps a forgotten max_new_tokens cheap.
_DEFAULT_MAX_NEW_TOKENS = 32
# Size of the learned BPE vocabulary (its alphabet included), before special and byte tokens.
_BPE_VOCAB_SIZE = 768

# The tokenizers' training text: chat words, document-style English and Russian, digits and
# punctuation, so that prompts and documents split into sub-words rather than single bytes.
_CORPUS: tuple[str, ...] = (
    "system user assistant model System User Assistant USER ASSISTANT You are a helpful assistant.",
    "Picture 1: Picture 2: Video 1:\nAnswer:\n\nQuestion:\n",
    "Be brief. What is the total? Describe the image. Read the document and answer.",
    "Extract the fields as JSON: name, date, amount, currency, address, phone, email.",
    'Return {"total": "1,234.56", "currency": "USD", "date": "2024-03-15"} only.',
    "INVOICE No. 00417 Date: 15/03/2024 Due: 30/04/2024 Bill to: John Smith, 12 Main St.",
    "Qty Description Unit price Amount\n2 Paper A4 5.99 11.98\n1 Toner cartridge 64.00\n",
    "Subtotal: 75.98 Tax (20%): 15.20 Total: 91.18 Paid by card **** 4821",
    "Receipt #12-7789, 08:45 AM, Springfield Market; cash 100.00; change 8.82.",
    "Table 3. Results (mean ± std): accuracy 0.912, recall 0.874, F1 = 0.89 [n = 1000].",
    "Phone: +1 (555) 010-2233, e-mail: info@example.com, web: https://example.com/page?id=7",
    "Счёт-фактура № 42 от 1 января 2024 г. Поставщик: ООО «Ромашка», ИНН 7701234567.",
    "Итого к оплате: 5 678,90 руб., в том числе НДС 20% — 946,48 руб.",
    "Дата: 15.03.2024. Адрес: г. Москва, ул. Ленина, д. 10, кв. 5. Телефон: 8-800-555-35-35.",
    "Какова общая сумма? Опишите изображение. Ответьте кратко на русском языке.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 20 25 50 99 100 250 500 1000 2023 2024 2025 3.14 0.5",
    "! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~ — « » № € £ ¥",
    "The quick brown fox jumps over the lazy dog. Съешь же ещё этих мягких французских булок.",
)


def is_tiny_model(name: str) -> bool:
    """Whether ``name`` names one of the tiny models this module can build."""
    return name in TINY_MODEL_NAMES


def build_tiny_model(name: str, out_dir: str | os.PathLike) -> pathlib.Path:
    """Build the tiny model ``name`` into ``out_dir`` (created if needed) and return its path.

    Two builds of the same name are byte-identical: fixed seed, fixed corpus, no timestamps.
    """
    builder = _builder(name)
    out = pathlib.Path(out_dir)
    import torch

    with _quiet_progress():
        torch.manual_seed(_SEED)
        model, processor = builder()
        _randomize_weights(model)
        _mute_byte_pieces(model, processor.tokenizer)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        _rename_weights(out / "model.safetensors", _CHECKPOINT_NAMES.get(name, ()))
        processor.save_pretrained(out)
    (out / MARKER_FILE).write_text(json.dumps(_marker(name), indent=2, sort_keys=True) + "\n")
    return out


def ensure_tiny_model(name: str, cache_dir: str | os.PathLike) -> pathlib.Path:
    """Return ``<cache_dir>/tiny-models/<name>``, building it there on first use.

    A directory built by another builder version (or transformers version) is rebuilt.  The
    build goes into a temporary directory beside the target which is then renamed into place,
    so no reader ever sees a half-built model; when two processes race, the first rename wins
    and the other process discards its (identical) build.
    """
    target = tiny_model_dir(name, cache_dir)
    if _is_current(target, name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent))
    try:
        build_tiny_model(name, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private, but the cache may be shared
        if target.exists() and not _is_current(target, name):
            _discard_stale(target)
        try:
            os.rename(tmp, target)
        except OSError:
            # The target is not empty: another process renamed its build into place first.
            if not _is_current(target, name):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tiny_model_dir(name: str, cache_dir: str | os.PathLike) -> pathlib.Path:
    """Where ensure_tiny_model() keeps ``name`` in ``cache_dir`` (built there or not)."""
    _builder(name)  # an unknown name fails here, before anything touches the file system
    return pathlib.Path(cache_dir) / "tiny-models" / name


def list_tiny_models(cache_dir: str | os.PathLike) -> list[pathlib.Path]:
    """The completely built tiny models in ``cache_dir``, in TINY_MODEL_NAMES order.

    Builds of an older builder version count too (they take space until rebuilt); unfinished
    temporary builds do not.
    """
    paths = (tiny_model_dir(name, cache_dir) for name in TINY_MODEL_NAMES)
    return [path for path in paths if (path / MARKER_FILE).is_file()]


# --- cache and build helpers -----------------------------------------------------------------


def _builder(name: str) -> Callable[[], tuple[Any, Any]]:
    try:
        return _BUILDERS[name]
    except KeyError:
        valid = ", ".join(TINY_MODEL_NAMES)
        raise ValueError(f"unknown tiny model {name!r}; valid names: {valid}") from None


def _marker(name: str) -> dict[str, Any]:
    from importlib.metadata import version

    # A checkpoint saved by one transformers version may not load in another.  The version
    # comes from the package metadata so that a cache hit need not import transformers.
    return {
        "name": name,
        "builder_version": BUILDER_VERSION,
        "transformers": version("transformers"),
    }


def _is_current(path: pathlib.Path, name: str) -> bool:
    try:
        found = json.loads((path / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return found == _marker(name)


def _discard_stale(target: pathlib.Path) -> None:
    # Move it aside first so that the name frees up at once, then delete it.
    trash = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
    with contextlib.suppress(OSError):  # another process moved or replaced it already
        os.rename(target, pathlib.Path(trash) / target.name)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence transformers' progress bars ("Writing model shards") while building."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _mute_byte_pieces(model: Any, tokenizer: Any) -> None:
    """Zero the output rows of byte-fallback pieces (``<0x0A>``...): a random model picks them
    often (a quarter of a tiny vocabulary, a hundredth of a real one), and answers of stray
    bytes decode to U+FFFD alike, whatever the input. A trained model rarely writes them."""
    import torch

    ids = [
        index
        for token, index in tokenizer.get_vocab().items()
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">")
    ]
    if ids:
        with torch.no_grad():
            model.get_output_embeddings().weight[ids] = 0


def _rename_weights(path: pathlib.Path, renames: Sequence[tuple[str, str]]) -> None:
    """Give the weights in ``path`` the names the family's real checkpoints use, where
    transformers saves them otherwise (it reads both, other engines only the real ones)."""
    if not renames:
        return
    from safetensors.torch import load_file, save_file

    weights = load_file(path)
    renamed = {}
    for key, tensor in weights.items():
        for old, new in renames:
            if key.startswith(old) and not key.startswith(new):
                key = new + key[len(old) :]
        renamed[key] = tensor
    save_file(renamed, path, metadata={"format": "pt"})


def _randomize_weights(model: Any) -> None:
    """Redraw every weight matrix from N(0, 1/fan_in), with one seeded generator.

    The families' own initialisations (std 0.02, and a zero ``mm_input_projection_weight`` in
    Gemma 3, which trained weights would replace) leave a tiny random model nearly blind to its
    context: attention stays uniform, so another image, another image order or another system
    prompt often leaves the greedy output unchanged.  Fan-in scaling keeps activations of order
    one through the layers, so that every input token matters.  Norms and biases are kept.
    """
    import torch

    generator = torch.Generator().manual_seed(_SEED)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.dim() >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)


# --- tokenizers ------------------------------------------------------------------------------

Vocab = dict[str, int]
Merges = list[tuple[str, str]]


def _train_bpe(pre_tokenizer: Any, *, byte_level: bool) -> tuple[list[str], Merges]:
    """Train BPE on the corpus; return the learned tokens in id order, and the merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else [],
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    trained = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(trained["vocab"], key=trained["vocab"].__getitem__)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return tokens, merges


def _byte_level_vocab(pre_tokenizer: Any, specials: Sequence[str]) -> tuple[Vocab, Merges]:
    """Byte-level BPE (GPT-2, Qwen, Llama 3): learned tokens, then the special tokens."""
    tokens, merges = _train_bpe(pre_tokenizer, byte_level=True)
    return {token: i for i, token in enumerate([*tokens, *specials])}, merges


def _byte_fallback_vocab(
    head: Sequence[str], *, prefix_space: bool, tail: Sequence[str] = ()
) -> tuple[Vocab, Merges]:
    """SentencePiece-style BPE (Llama 2, Gemma): head specials, 256 byte pieces, learned pieces,
    tail specials.  Characters outside the learned pieces fall back to the byte pieces."""
    from tokenizers import pre_tokenizers

    # Training splits words at "▁" so that no merge spans two words; the families' pipelines
    # do not split, which yields the same pieces.
    metaspace = pre_tokenizers.Metaspace(prepend_scheme="first" if prefix_space else "never")
    tokens, merges = _train_bpe(metaspace, byte_level=False)
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    ordered = [*head, *byte_pieces, *tokens, *tail]
    return {token: i for i, token in enumerate(ordered)}, merges


# --- families --------------------------------------------------------------------------------
#
# A builder returns a new (model, processor) pair; build_tiny_model() seeds torch before
# calling it and then redraws the weights.  Config token ids come from the tokenizer's
# vocabulary, and every tokenizer pads on the left, as batched generation needs.


def _text_config(tokenizer: Any, **extra: Any) -> dict[str, Any]:
    return {
        **_TEXT,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        # With tied embeddings a random model tends to echo its input tokens back.
        "tie_word_embeddings": False,
        **extra,
    }


def _finish(model: Any, tokenizer: Any, chat_template: str, eos_tokens: list[str]) -> None:
    """Set the generation defaults a hub checkpoint ships, and the tokenizer's chat template
    (the same as the processor's, so that AutoTokenizer alone can format chats too)."""
    tokenizer.chat_template = chat_template
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.convert_tokens_to_ids(eos_tokens)
    generation.pad_token_id = tokenizer.pad_token_id
    generation.max_new_tokens = _DEFAULT_MAX_NEW_TOKENS


# Qwen2-VL and Qwen2.5-VL ---------------------------------------------------------------------

_QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen/Qwen2-VL-7B-Instruct's template (Qwen2.5-VL ships the same one).
_QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_tokenizer(
    specials: Sequence[str] = _QWEN_SPECIALS, plain: Sequence[str] = (), **named: str
) -> Any:
    """Qwen's byte-level BPE with its special tokens (``named`` ones also as attributes, e.g.
    ``video_token``), then ``plain`` added tokens: whole tokens that decoding keeps (Qwen3's
    ``<think>``, ``</think>``, tool-call tags)."""
    import transformers as tf

    pre_tokenizer = tf.Qwen2Tokenizer().backend_tokenizer.pre_tokenizer
    vocab, merges = _byte_level_vocab(pre_tokenizer, specials)
    tokenizer = tf.Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        # Without these the vision tokens would be split into bytes.
        extra_special_tokens=list(specials[1:]),
        **named,
        padding_side="left",
        model_max_length=_TEXT["max_position_embeddings"],
    )
    tokenizer.add_tokens(list(plain), special_tokens=False)
    return tokenizer


def _qwen_vision_token_ids(tokenizer: Any) -> dict[str, int]:
    """The ids of the tokens around and inside an image or video, as the Qwen-VL configs name
    them."""
    names = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in names.items()}


def _build_qwen(*, v2_5: bool) -> tuple[Any, Any]:
    import transformers as tf

    tokenizer = _qwen_tokenizer()
    # Any image becomes at most 56x56 pixels: at most 4x4 patches, merged 2x2 into 4 tokens.
    sizes = {"min_pixels": 28 * 28, "max_pixels": _IMAGE_PX**2, "patch_size": _PATCH_PX}
    # The rotary half-dimensions are split between time, height and width.
    mrope_section = [4, 6, 6]
    assert sum(mrope_section) == _HEAD_DIM // 2
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section}
    vision = {"depth": 1, "num_heads": 2, "patch_size": _PATCH_PX, "spatial_merge_size": 2}
    if v2_5:
        families = (
            tf.Qwen2_5_VLConfig,
            tf.Qwen2_5_VLForConditionalGeneration,
            tf.Qwen2_5_VLProcessor,
        )
        vision |= {
            "hidden_size": _VISION["hidden_size"],
            "intermediate_size": _VISION["intermediate_size"],
            "out_hidden_size": _TEXT["hidden_size"],
            "fullatt_block_indexes": [0],
        }
    else:
        families = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
        # Qwen2-VL calls the encoder width embed_dim; its hidden_size is the merger's output.
        vision |= {
            "embed_dim": _VISION["hidden_size"],
            "mlp_ratio": _VISION["intermediate_size"] // _VISION["hidden_size"],
            "hidden_size": _TEXT["hidden_size"],
        }
    config_cls, model_cls, processor_cls = families
    config = config_cls(
        text_config=_text_config(tokenizer, rope_parameters=rope),
        vision_config=vision,
        **_qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    model = model_cls(config)
    processor = processor_cls(
        image_processor=tf.Qwen2VLImageProcessor(**sizes, merge_size=2),
        tokenizer=tokenizer,
        video_processor=tf.Qwen2VLVideoProcessor(**sizes, merge_size=2),
        chat_template=_QWEN_CHAT_TEMPLATE,
    )
    _finish(model, tokenizer, _QWEN_CHAT_TEMPLATE, ["<|im_end|>", "<|endoftext|>"])
    return model, processor


# Qwen3-VL ------------------------------------------------------------------------------------

# Qwen3's added tokens that are not special: decoding keeps them, so a reasoning block's
# markers stay in the answer text for the runner to split off.
_QWEN3_PLAIN_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]
_TEMPLATES = pathlib.Path(__file__).parent / "chat_templates"


def _build_qwen3_vl(*, thinking: bool) -> tuple[Any, Any]:
    """Qwen3-VL: Qwen3 text layers (q/k norms, interleaved multimodal rotary positions), a vision
    tower of 16-px patches with learned position embeddings, and DeepStack (features of early
    vision layers added to the first text layers).  The two checkpoints of a size differ only in
    weights and chat template: -Instruct never thinks; -Thinking's template opens a ``<think>``
    block in every answer (its template has no switch to turn that off)."""
    import transformers as tf

    tokenizer = _qwen_tokenizer(plain=_QWEN3_PLAIN_TOKENS)
    template_file = "qwen3_vl_thinking.jinja" if thinking else "qwen3_vl_instruct.jinja"
    chat_template = (_TEMPLATES / template_file).read_text()
    patch_px = 16
    # A 64x64 image is 4x4 patches, merged 2x2 into 4 tokens; larger images are scaled down.
    sizes = {
        "size": {"shortest_edge": (2 * patch_px) ** 2, "longest_edge": (4 * patch_px) ** 2},
        "patch_size": patch_px,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    # The real checkpoints split the rotary half-dimensions 24:20:20 (time:height:width),
    # interleaved; the same proportions over this head's 16.
    rope = {
        "rope_type": "default",
        "rope_theta": 5e6,
        "mrope_section": [6, 5, 5],
        "mrope_interleaved": True,
    }
    vision = {
        "depth": 2,
        "hidden_size": _VISION["hidden_size"],
        "intermediate_size": _VISION["intermediate_size"],
        "num_heads": 2,
        "patch_size": patch_px,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": _TEXT["hidden_size"],
        "num_position_embeddings": 16,  # a 4x4 grid, interpolated to other grids
        "deepstack_visual_indexes": [0],
    }
    config = tf.Qwen3VLConfig(
        text_config=_text_config(tokenizer, head_dim=_HEAD_DIM, rope_parameters=rope),
        vision_config=vision,
        **_qwen_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    model = tf.Qwen3VLForConditionalGeneration(config)
    processor = tf.Qwen3VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(**sizes),
        tokenizer=tokenizer,
        video_processor=tf.Qwen3VLVideoProcessor(**sizes),
        chat_template=chat_template,
    )
    _finish(model, tokenizer, chat_template, ["<|im_end|>", "<|endoftext|>"])
    return model, processor


# InternVL3 -----------------------------------------------------------------------------------

# OpenGVLab/InternVL3-*-hf: Qwen2.5's tokenizer with InternVL's tokens added after it.
_INTERNVL_SPECIALS = [
    *_QWEN_SPECIALS,
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<video>",
]
# The -hf checkpoints' template (transformers' InternVL conversion script): no default system
# message, an image is <IMG_CONTEXT> and a line break, which the processor widens into
# <img>, one <IMG_CONTEXT> per image token and tile, </img>.
_INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def _build_internvl3() -> tuple[Any, Any]:
    """InternVL3: an InternViT tower (CLS token, layer scale), pixel shuffle to a quarter of the
    patches, an MLP projector, Qwen2.5 text layers.  As in the real processor, an image larger
    than one tile is cut into up to 12 tiles plus a thumbnail, each its own image tokens."""
    import transformers as tf

    tokenizer = _qwen_tokenizer(
        _INTERNVL_SPECIALS,
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
    )
    tokens_per_tile = (_IMAGE_PX // _PATCH_PX) ** 2 // 4  # pixel shuffle halves each side
    vision = {
        **_VISION,
        "num_hidden_layers": 2,
        "image_size": [_IMAGE_PX, _IMAGE_PX],
        "patch_size": [_PATCH_PX, _PATCH_PX],
    }
    config = tf.InternVLConfig(
        vision_config=vision,
        text_config=_text_config(tokenizer, model_type="qwen2"),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = tf.InternVLForConditionalGeneration(config)
    tile = {"height": _IMAGE_PX, "width": _IMAGE_PX}
    imagenet = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    processor = tf.InternVLProcessor(
        image_processor=tf.GotOcr2ImageProcessor(
            size=tile, crop_to_patches=True, min_patches=1, max_patches=12, **imagenet
        ),
        tokenizer=tokenizer,
        video_processor=tf.InternVLVideoProcessor(size=tile, **imagenet),
        image_seq_length=tokens_per_tile,
        chat_template=_INTERNVL_CHAT_TEMPLATE,
    )
    _finish(model, tokenizer, _INTERNVL_CHAT_TEMPLATE, ["<|im_end|>"])
    return model, processor


# Idefics3 and SmolVLM ------------------------------------------------------------------------

# The row/column tokens only appear when an image is split into tiles, which the tiny
# processors never do, but they are part of the real vocabularies.
_IDEFICS_SPECIALS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)),
]
_SMOLVLM_NAMED_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "end_of_utterance_token": "<end_of_utterance>",
    "global_image_token": "<global-img>",
}

# HuggingFaceM4/Idefics3-8B-Llama3's template.
_IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# SmolVLM's template (the SmolVLM2 variant, which also takes plain-string content and videos).
_SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}"
    "{{ '<video>' }}{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

_LLAMA3_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _build_smolvlm() -> tuple[Any, Any]:
    import transformers as tf

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_IDEFICS_SPECIALS]
    pre_tokenizer = tf.GPT2Tokenizer().backend_tokenizer.pre_tokenizer
    vocab, merges = _byte_level_vocab(pre_tokenizer, specials)
    tokenizer = tf.GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        extra_special_tokens=specials,
        **_SMOLVLM_NAMED_TOKENS,
        padding_side="left",
        model_max_length=_TEXT["max_position_embeddings"],
    )
    return _build_idefics_like(tokenizer, _SMOLVLM_CHAT_TEMPLATE, smolvlm=True)


def _build_idefics3() -> tuple[Any, Any]:
    import transformers as tf
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    # Llama 3's byte-level tokenizer, which the checkpoint ships as a plain tokenizer.json.
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"]
    vocab, merges = _byte_level_vocab(pre_tokenizer, [*specials, *_IDEFICS_SPECIALS])
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    tokenizer = tf.TokenizersBackend(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<end_of_utterance>",
        pad_token="<|finetune_right_pad_id|>",
        add_bos_token=True,
        extra_special_tokens=_IDEFICS_SPECIALS,
        padding_side="left",
        model_max_length=_TEXT["max_position_embeddings"],
    )
    return _build_idefics_like(tokenizer, _IDEFICS3_CHAT_TEMPLATE, smolvlm=False)


def _build_idefics_like(tokenizer: Any, chat_template: str, *, smolvlm: bool) -> tuple[Any, Any]:
    import transformers as tf

    scale_factor = 2  # pixel shuffle: 4x4 patches become 2x2 image tokens
    image_seq_len = (_IMAGE_PX // _PATCH_PX) ** 2 // scale_factor**2
    # No tiling: every image is resized to one 56x56 frame.
    sizes = {"size": {"longest_edge": _IMAGE_PX}, "max_image_size": {"longest_edge": _IMAGE_PX}}
    config_kwargs = {
        "text_config": _text_config(tokenizer, model_type="llama", rms_norm_eps=1e-5),
        "vision_config": _VISION,
        "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        "scale_factor": scale_factor,
        "tie_word_embeddings": False,
    }
    if smolvlm:
        model = tf.SmolVLMForConditionalGeneration(tf.SmolVLMConfig(**config_kwargs))
        processor = tf.SmolVLMProcessor(
            image_processor=tf.SmolVLMImageProcessor(**sizes, do_image_splitting=False),
            tokenizer=tokenizer,
            video_processor=tf.SmolVLMVideoProcessor(**sizes),
            image_seq_len=image_seq_len,
            chat_template=chat_template,
        )
    else:
        model = tf.Idefics3ForConditionalGeneration(tf.Idefics3Config(**config_kwargs))
        processor = tf.Idefics3Processor(
            image_processor=tf.Idefics3ImageProcessor(**sizes, do_image_splitting=False),
            tokenizer=tokenizer,
            image_seq_len=image_seq_len,
            chat_template=chat_template,
        )
    _finish(model, tokenizer, chat_template, ["<end_of_utterance>"])
    return model, processor


# LLaVA 1.5 -----------------------------------------------------------------------------------

# llava-hf/llava-1.5-7b-hf's template: a system message is rendered as bare text, and a turn's
# images come before its text.  Content must be a list of typed parts.
_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _build_llava() -> tuple[Any, Any]:
    import transformers as tf

    vocab, merges = _byte_fallback_vocab(
        ["<unk>", "<s>", "</s>"], prefix_space=True, tail=["<image>", "<pad>"]
    )
    tokenizer = tf.LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        image_token="<image>",
        add_bos_token=True,
        padding_side="left",
        model_max_length=_TEXT["max_position_embeddings"],
    )
    # A CLIP tower; LLaVA reads its second-to-last layer and drops the CLS token.
    vision = {**_VISION, "model_type": "clip_vision_model", "num_hidden_layers": 2}
    config = tf.LlavaConfig(
        vision_config=vision,
        text_config=_text_config(tokenizer, model_type="llama"),
        image_token_index=vocab["<image>"],
        image_seq_length=(_IMAGE_PX // _PATCH_PX) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    model = tf.LlavaForConditionalGeneration(config)
    image_processor = tf.CLIPImageProcessor(
        size={"shortest_edge": _IMAGE_PX}, crop_size={"height": _IMAGE_PX, "width": _IMAGE_PX}
    )
    processor = tf.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_PATCH_PX,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_LLAVA_CHAT_TEMPLATE,
    )
    _finish(model, tokenizer, _LLAVA_CHAT_TEMPLATE, ["</s>"])
    return model, processor


# Gemma 3 -------------------------------------------------------------------------------------

# google/gemma-3-4b-it's template: the system text is prefixed to the first user turn.
_GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""


_GEMMA_NEWLINE_RUNS = 4  # the longest run of line breaks that is one piece ("\n\n\n\n")


def _build_gemma3() -> tuple[Any, Any]:
    import transformers as tf

    turn_and_image = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"]
    vocab, merges = _byte_fallback_vocab(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *turn_and_image],
        prefix_space=False,
        tail=["<image_soft_token>"],
    )
    # Gemma's vocabulary has one piece per run of line breaks (up to 31), and engines rely on
    # them: vLLM's Gemma 3 joins the "\n\n" its image placeholder brings with the breaks beside
    # it. The runs merge before anything else, so a run is always one piece, as in Gemma.
    runs = ["\n" * length for length in range(2, _GEMMA_NEWLINE_RUNS + 1)]
    vocab |= {run: len(vocab) + index for index, run in enumerate(runs)}
    merges = [
        ("\n" * (length - length // 2), "\n" * (length // 2))
        for length in range(2, _GEMMA_NEWLINE_RUNS + 1)
    ] + merges
    tokenizer = tf.GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        boi_token="<start_of_image>",
        eoi_token="<end_of_image>",
        image_token="<image_soft_token>",
        extra_special_tokens=turn_and_image,
        add_bos_token=True,
        padding_side="left",
        model_max_length=_TEXT["max_position_embeddings"],
    )
    text = _text_config(
        tokenizer,
        model_type="gemma3_text",
        head_dim=_HEAD_DIM,
        query_pre_attn_scalar=_HEAD_DIM,
        # Gemma 3 interleaves local (sliding-window) and global layers; keep one of each, with a
        # window shorter than a typical prompt so that the local layer really is local.
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=16,
    )
    tokens_per_image = 4  # 4x4 patches average-pooled 2x2
    config = tf.Gemma3Config(
        text_config=text,
        vision_config={**_VISION, "model_type": "siglip_vision_model", "vision_use_head": False},
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=vocab["<start_of_image>"],
        eoi_token_index=vocab["<end_of_image>"],
        image_token_index=vocab["<image_soft_token>"],
        tie_word_embeddings=False,
    )
    model = tf.Gemma3ForConditionalGeneration(config)
    processor = tf.Gemma3Processor(
        image_processor=tf.Gemma3ImageProcessor(size={"height": _IMAGE_PX, "width": _IMAGE_PX}),
        tokenizer=tokenizer,
        chat_template=_GEMMA3_CHAT_TEMPLATE,
        image_seq_length=tokens_per_image,
    )
    _finish(model, tokenizer, _GEMMA3_CHAT_TEMPLATE, ["<eos>", "<end_of_turn>"])
    return model, processor


# Weight names transformers saves differently from the family's hub checkpoints (its prefix,
# the checkpoints'): llava-hf's and Google's Gemma 3 keep the vision tower's vision_model
# level, which vLLM needs.
_CHECKPOINT_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "tiny-llava": (("vision_tower.", "vision_tower.vision_model."),),
    "tiny-gemma3": (("vision_tower.", "vision_tower.vision_model."),),
}

# The one table of families: name -> builder of a fresh (model, processor).
_BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "tiny-qwen2-vl": lambda: _build_qwen(v2_5=False),
    "tiny-qwen2.5-vl": lambda: _build_qwen(v2_5=True),
    "tiny-smolvlm": _build_smolvlm,
    "tiny-idefics3": _build_idefics3,
    "tiny-llava": _build_llava,
    "tiny-gemma3": _build_gemma3,
    "tiny-qwen3-vl": lambda: _build_qwen3_vl(thinking=False),
    "tiny-qwen3-vl-thinking": lambda: _build_qwen3_vl(thinking=True),
    "tiny-internvl3": _build_internvl3,
}
