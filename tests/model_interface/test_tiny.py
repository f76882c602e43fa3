"""Tests for model_interface.tiny: real tiny checkpoints built offline, loaded the standard way."""

from __future__ import annotations

import os

# Before transformers is imported: no hub access, no progress bars.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from model_interface import tiny

# The real classes each name must load as.
EXPECTED_CLASSES = {
    "tiny-qwen2-vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "tiny-qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "tiny-smolvlm": ("SmolVLMForConditionalGeneration", "SmolVLMProcessor"),
    "tiny-idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor"),
    "tiny-llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
    "tiny-gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Processor"),
    "tiny-qwen3-vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    "tiny-qwen3-vl-thinking": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    "tiny-internvl3": ("InternVLForConditionalGeneration", "InternVLProcessor"),
}
REPO_ROOT = pathlib.Path(tiny.__file__).resolve().parent.parent

# 56x56 images, a size that no family's processor resizes much.
BLACK = Image.new("RGB", (56, 56), (0, 0, 0))
WHITE = Image.new("RGB", (56, 56), (255, 255, 255))
NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8))

DOCUMENT = "INVOICE No. 00417, Date: 15/03/2024.\nИтого к оплате: 5 678,90 руб. Total: $91.18"

per_family = pytest.mark.parametrize("name", tiny.TINY_MODEL_NAMES)


def chat(system: str, n_images: int, question: str) -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {
            "role": "user",
            "content": [{"type": "image"}] * n_images + [{"type": "text", "text": question}],
        },
    ]


class Loaded:
    """A tiny model loaded through the Auto classes, as any hub model would be."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.processor = transformers.AutoProcessor.from_pretrained(path)
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(path)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])

    def inputs(self, chats: list[list[dict]], images: list[list[Image.Image]]):
        texts = [
            self.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in chats
        ]
        return self.processor(text=texts, images=images, return_tensors="pt", padding=True)

    def generate(self, chats, images, max_new_tokens: int = 16) -> list[list[int]]:
        """Greedy new tokens per prompt, cut after the first EOS (a batch pads finished rows)."""
        inputs = self.inputs(chats, images)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return [self._until_eos(row) for row in out[:, inputs["input_ids"].shape[1] :].tolist()]

    def _until_eos(self, tokens: list[int]) -> list[int]:
        ends = [i for i, token in enumerate(tokens) if token in self.eos]
        return tokens[: ends[0] + 1] if ends else tokens

    def one(self, system: str, images: list[Image.Image], question: str) -> list[int]:
        return self.generate([chat(system, len(images), question)], [images])[0]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny matrices gain nothing from threads, and on a busy machine competing threads make
    # generation ten times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded_models() -> dict[str, Loaded]:
    return {}


@pytest.fixture
def loaded(name, loaded_models, tmp_path_factory) -> Loaded:
    # Built and loaded once per family for the module; the generation tests only read it.
    if name not in loaded_models:
        path = tiny.build_tiny_model(name, tmp_path_factory.mktemp("built") / name)
        loaded_models[name] = Loaded(path)
    return loaded_models[name]


def tree(path: pathlib.Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()
    }


def mtimes(path: pathlib.Path) -> dict[str, int]:
    return {str(f.relative_to(path)): f.stat().st_mtime_ns for f in path.rglob("*")}


# --- building and loading --------------------------------------------------------------------


def test_names():
    assert len(tiny.TINY_MODEL_NAMES) == 9
    assert all(tiny.is_tiny_model(name) for name in tiny.TINY_MODEL_NAMES)
    assert not tiny.is_tiny_model("qwen2-vl")


def test_unknown_name_lists_valid_names(tmp_path):
    for call in (tiny.build_tiny_model, tiny.ensure_tiny_model):
        with pytest.raises(ValueError, match="valid names") as error:
            call("tiny-nope", tmp_path)
        assert all(name in str(error.value) for name in tiny.TINY_MODEL_NAMES)
    assert list(tmp_path.iterdir()) == []


def python(code: str, *args: str) -> subprocess.Popen:
    """Start a fresh interpreter that can import model_interface."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


LOADED_HEAVY_MODULES = "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"


@pytest.mark.slow
def test_import_does_not_load_torch_or_transformers():
    out, err = python(f"import sys, model_interface.tiny; {LOADED_HEAVY_MODULES}").communicate()
    assert out.strip() == "[]", err


@per_family
def test_builds_are_byte_identical(name, tmp_path):
    first = tree(tiny.build_tiny_model(name, tmp_path / "a"))
    second = tree(tiny.build_tiny_model(name, tmp_path / "b"))
    assert "model.safetensors" in first and "config.json" in first
    assert first.keys() == second.keys()
    assert [f for f in first if first[f] != second[f]] == []
    assert sum(map(len, first.values())) < 1_500_000  # about 1 MB


@pytest.mark.slow
@per_family
def test_loads_as_the_real_classes(name, loaded):
    model_class, processor_class = EXPECTED_CLASSES[name]
    assert type(loaded.model).__name__ == model_class
    assert type(loaded.processor).__name__ == processor_class
    assert loaded.processor.tokenizer.padding_side == "left"


@pytest.mark.slow
@per_family
def test_tokenizer_handles_documents_and_special_tokens(name, loaded):
    tokenizer = loaded.processor.tokenizer
    ids = tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == DOCUMENT
    # Learned sub-words (Cyrillic too), not one token per byte or per character.
    assert len(ids) < 0.75 * len(DOCUMENT)
    # The image placeholder is one token, never split into pieces.
    image_token = loaded.processor.image_token
    assert len(tokenizer(image_token, add_special_tokens=False)["input_ids"]) == 1


# --- the chat template and generation --------------------------------------------------------


@pytest.mark.slow
@per_family
def test_template_renders_system_and_two_images(name, loaded):
    messages = chat("Be brief.", 2, "What is the total?")
    text = loaded.processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert "Be brief." in text and "What is the total?" in text
    assert text.count(loaded.processor.image_token) == 2
    no_prompt = loaded.processor.apply_chat_template(messages, tokenize=False)
    assert text.startswith(no_prompt) and len(text) > len(no_prompt)


@pytest.mark.slow
@per_family
def test_generates_from_two_images_in_one_prompt(name, loaded):
    inputs = loaded.inputs([chat("Be brief.", 2, "What is the total?")], [[NOISE, WHITE]])
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[0] == 1
    assert 0 < out.shape[1] - inputs["input_ids"].shape[1] <= 8
    # Swapping the two images changes what the model sees.
    swapped = loaded.one("Be brief.", [WHITE, NOISE], "What is the total?")
    assert loaded.one("Be brief.", [NOISE, WHITE], "What is the total?") != swapped


@pytest.mark.slow
@per_family
def test_different_images_give_different_outputs(name, loaded):
    black, white, noise = (
        loaded.one("Be brief.", [i], "Describe it.") for i in (BLACK, WHITE, NOISE)
    )
    assert black != white and black != noise and white != noise


@pytest.mark.slow
@per_family
def test_system_prompt_changes_output(name, loaded):
    brief = loaded.one("Be brief.", [NOISE], "What is the total?")
    detailed = loaded.one("Answer in detail.", [NOISE], "What is the total?")
    assert brief != detailed


@pytest.mark.slow
@per_family
def test_left_padded_batch_equals_one_by_one(name, loaded):
    chats = [
        chat("Be brief.", 1, "What is the total?"),
        chat("You read invoices.", 2, "Compare the two documents and list every difference."),
        chat("Be brief.", 2, "Итого?"),
        chat("Answer in JSON.", 1, "Extract the date."),
    ]
    images = [[NOISE], [BLACK, WHITE], [WHITE, NOISE], [BLACK]]
    mask = loaded.inputs(chats, images)["attention_mask"]
    assert not mask[:, 0].all() and mask[:, -1].all()  # really padded, and on the left
    batched = loaded.generate(chats, images)
    alone = [loaded.generate([c], [i])[0] for c, i in zip(chats, images, strict=True)]
    assert batched == alone


# --- the cache -------------------------------------------------------------------------------


@per_family
def test_ensure_builds_once_then_reuses(name, tmp_path):
    path = tiny.ensure_tiny_model(name, tmp_path)
    assert path == tmp_path / "tiny-models" / name
    marker = json.loads((path / tiny.MARKER_FILE).read_text())
    assert marker["builder_version"] == tiny.BUILDER_VERSION
    before = mtimes(path)
    assert tiny.ensure_tiny_model(name, tmp_path) == path
    assert mtimes(path) == before
    # Nothing left behind beside it: no temporary build directories.
    assert [p.name for p in path.parent.iterdir()] == [name]
    assert tree(path) == tree(tiny.build_tiny_model(name, tmp_path / "fresh"))


def test_tiny_model_dir_and_list_tiny_models(tmp_path):
    name = tiny.TINY_MODEL_NAMES[-1]
    assert tiny.tiny_model_dir(name, tmp_path) == tmp_path / "tiny-models" / name
    assert tiny.list_tiny_models(tmp_path) == []
    (tmp_path / "tiny-models" / f".{name}.unfinished.tmp").mkdir(parents=True)
    assert tiny.list_tiny_models(tmp_path) == []
    built = tiny.ensure_tiny_model(name, tmp_path)
    assert tiny.list_tiny_models(tmp_path) == [built]
    with pytest.raises(ValueError, match="valid names"):
        tiny.tiny_model_dir("tiny-nope", tmp_path)


@per_family
def test_ensure_rebuilds_after_a_version_bump(name, tmp_path, monkeypatch):
    path = tiny.ensure_tiny_model(name, tmp_path)
    (path / "stale-extra-file").write_text("from an older builder")
    monkeypatch.setattr(tiny, "BUILDER_VERSION", tiny.BUILDER_VERSION + 1)
    assert tiny.ensure_tiny_model(name, tmp_path) == path
    assert json.loads((path / tiny.MARKER_FILE).read_text())["builder_version"] == (
        tiny.BUILDER_VERSION
    )
    assert not (path / "stale-extra-file").exists()
    assert [p.name for p in path.parent.iterdir()] == [name]


@per_family
def test_ensure_loser_of_a_race_keeps_the_winners_build(name, tmp_path, monkeypatch):
    # Interleave a second "process" that finishes its build and renames it into place while
    # this one is still building: this one must then discard its own build.
    target = tmp_path / "tiny-models" / name
    real_build = tiny.build_tiny_model

    def build_while_another_process_wins(build_name, out_dir):
        real_build(build_name, tmp_path / "winner")
        (tmp_path / "winner" / "winner-was-here").touch()
        os.rename(tmp_path / "winner", target)
        return real_build(build_name, out_dir)

    monkeypatch.setattr(tiny, "build_tiny_model", build_while_another_process_wins)
    assert tiny.ensure_tiny_model(name, tmp_path) == target
    assert (target / "winner-was-here").exists()
    assert [p.name for p in target.parent.iterdir()] == [name]


@pytest.mark.slow
def test_ensure_from_two_racing_processes(tmp_path):
    # The race is the same for every family, and each process costs seconds of imports.
    name = tiny.TINY_MODEL_NAMES[0]
    ensure = "import sys, model_interface.tiny as t; print(t.ensure_tiny_model(*sys.argv[1:]))"
    racers = [python(ensure, name, str(tmp_path)) for _ in range(2)]
    results = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], results
    target = tmp_path / "tiny-models" / name
    assert {out.strip() for out, _ in results} == {str(target)}
    assert [p.name for p in target.parent.iterdir()] == [name]
    assert tree(target) == tree(tiny.build_tiny_model(name, tmp_path / "fresh"))
    # A cache hit only reads the marker: it imports neither torch nor transformers.
    out, err = python(f"{ensure}; {LOADED_HEAVY_MODULES}", name, str(tmp_path)).communicate()
    assert out.splitlines() == [str(target), "[]"], err


# --- the newer families' released chat templates ---------------------------------------------

# SHA-256 of Qwen3-VL-8B-Instruct's template as Qwen/Qwen3-VL-8B-Instruct-GGUF ships it
# (tokenizer.chat_template, 5292 bytes), which tiny-qwen3-vl carries byte for byte.
QWEN3_VL_INSTRUCT_TEMPLATE_SHA256 = (
    "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
)


def test_the_qwen3_vl_instruct_template_is_the_released_one():
    import hashlib

    template = REPO_ROOT / "model_interface" / "chat_templates" / "qwen3_vl_instruct.jinja"
    assert hashlib.sha256(template.read_bytes()).hexdigest() == QWEN3_VL_INSTRUCT_TEMPLATE_SHA256


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "opening"),
    [("tiny-qwen3-vl", ""), ("tiny-qwen3-vl-thinking", "<think>\n"), ("tiny-internvl3", "")],
)
def test_the_newer_templates_render_as_their_checkpoints_do(name, opening, loaded):
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Total?"}]}
    image = loaded.processor.image_token if name == "tiny-internvl3" else None
    text = loaded.processor.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    # No default system message (Qwen2-VL's template adds one); Thinking opens its block.
    shown = "<|vision_start|><|image_pad|><|vision_end|>" if image is None else f"{image}\n"
    assert text == f"<|im_start|>user\n{shown}Total?<|im_end|>\n<|im_start|>assistant\n{opening}"
    if opening:
        # An earlier turn's thinking is dropped from the history, as Qwen3's templates do.
        answered = {"role": "assistant", "content": "<think>\nhm\n</think>\n\n42"}
        history = loaded.processor.apply_chat_template(
            [user, answered, user], tokenize=False, add_generation_prompt=True
        )
        assert "hm" not in history and "<|im_start|>assistant\n42<|im_end|>" in history
