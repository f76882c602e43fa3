"""The Hugging Face backend on real transformers models (tiny, random weights, built offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_interface import tiny
from model_interface.backends import hf
from model_interface.backends.hf import HFModel
from model_interface.model_interface import PredictionRequest, predict_isolated
from tests.support.helpers import REPO_ROOT

SAMPLE_IMAGE = REPO_ROOT / "data" / "sample_docs" / "images" / "invoice_001.png"

# 56x56 pictures: no family's processor resizes them much, so outputs are stable.
BLACK = Image.new("RGB", (56, 56), (0, 0, 0))
WHITE = Image.new("RGB", (56, 56), (255, 255, 255))
NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=tiny.TINY_MODEL_NAMES)
def model(request: pytest.FixtureRequest, model_cache: Path) -> HFModel:
    return HFModel(
        request.param, system_prompt="Be brief.", cache_dir=str(model_cache), max_new_tokens=12
    )


def texts(model: HFModel, requests: list[PredictionRequest]) -> list[str]:
    return [prediction.text for prediction in model.predict_batch(requests)]


def test_one_image_and_two_images_in_one_prompt(model: HFModel) -> None:
    one, two = model.predict_batch(
        [PredictionRequest([NOISE], "What is the total?")],
    ) + model.predict_batch([PredictionRequest([NOISE, WHITE], "What is the total?")])
    for prediction in (one, two):
        assert prediction.error is None
        assert 0 < prediction.completion_tokens <= 12
    assert two.prompt_tokens > one.prompt_tokens  # the second image adds its tokens


def test_a_batch_equals_the_same_prompts_one_by_one(model: HFModel) -> None:
    requests = [
        PredictionRequest([NOISE], "What is the total?"),
        PredictionRequest([BLACK, WHITE], "Compare the two documents and list the differences."),
        PredictionRequest([WHITE], "Name?"),
        PredictionRequest([NOISE, BLACK], "Read the document."),
    ]
    batched = model.predict_batch(requests)
    alone = [model.predict_batch([request])[0] for request in requests]
    assert [p.text for p in batched] == [p.text for p in alone]
    assert [p.prompt_tokens for p in batched] == [p.prompt_tokens for p in alone]
    assert [p.completion_tokens for p in batched] == [p.completion_tokens for p in alone]


def test_the_image_and_the_system_prompt_change_the_output(model: HFModel) -> None:
    question = "Describe the image."
    by_image = texts(model, [PredictionRequest([image], question) for image in (BLACK, NOISE)])
    assert by_image[0] != by_image[1]
    other_system = PredictionRequest([NOISE], question, system_prompt="Answer in JSON.")
    assert texts(model, [other_system]) != by_image[1:]


def test_text_only_requests_alone_and_mixed_with_image_requests(model: HFModel) -> None:
    text_only = PredictionRequest([], "What is two plus two?")
    with_image = PredictionRequest([NOISE], "What is the total?")
    (alone,) = model.predict_batch([text_only])
    assert alone.error is None and alone.text and 0 < alone.completion_tokens <= 12
    mixed = model.predict_batch([text_only, with_image, text_only])
    assert [p.text for p in mixed] == [alone.text, texts(model, [with_image])[0], alone.text]
    assert mixed[0].prompt_tokens == mixed[2].prompt_tokens == alone.prompt_tokens


def test_a_requests_own_generation_settings_apply_to_it_alone(model: HFModel) -> None:
    short = PredictionRequest([NOISE], "What is the total?", generation={"max_new_tokens": 3})
    default = PredictionRequest([NOISE], "What is the total?")
    batched = model.predict_batch([short, default, short])
    alone = [model.predict_batch([request])[0] for request in (short, default)]
    assert [p.completion_tokens for p in batched] == [3, 12, 3]
    assert [p.text for p in batched] == [alone[0].text, alone[1].text, alone[0].text]


def test_a_stop_string_ends_the_answer_before_it(model: HFModel) -> None:
    question = PredictionRequest([NOISE], "Describe the image.")
    (full,) = model.predict_batch([question])
    # One token's text from the answer's second half. A random model also writes special tokens,
    # which the answer leaves out but generation sees: a stop spanning one could not match.
    tokenizer = model.processor.tokenizer
    pieces = [tokenizer.decode([token]) for token in full.token_ids[len(full.token_ids) // 2 :]]
    special = set(tokenizer.all_special_tokens)
    stop = next(p for p in pieces if p.strip() and p not in special and "\ufffd" not in p)
    expected = full.text[: full.text.find(stop)].strip()
    stopped, again = model.predict_batch(
        [PredictionRequest([NOISE], "Describe the image.", generation={"stop": [stop]}), question]
    )
    assert stopped.text == expected and again.text == full.text
    assert stopped.completion_tokens < full.completion_tokens


FIELDS_SCHEMA = {
    "type": "object",
    "properties": {
        "Фамилия": {"type": "string", "maxLength": 12},
        "Номер": {"type": "string", "minLength": 2, "maxLength": 10},
        "total": {"type": "string", "maxLength": 8},
    },
    "required": ["Фамилия", "Номер", "total"],
    "additionalProperties": False,
}


def follows_fields_schema(text: str) -> bool:
    """Valid JSON with exactly the schema's fields, each a string. (Lengths are kept too, but
    a byte-level model may pick bytes that are not UTF-8, each decoded as one U+FFFD, so they
    are not checked in characters.)"""
    try:
        value = json.loads(text)  # strict: raw control characters are invalid JSON
    except ValueError:
        return False
    properties = FIELDS_SCHEMA["properties"]
    return set(value) == set(properties) and all(
        isinstance(value[name], str) for name in properties
    )


def test_a_json_schema_makes_every_answer_follow_it(model: HFModel) -> None:
    # A random-weight model answers garbage; constrained, the garbage is valid JSON of the
    # schema, every time. Enough new tokens for the longest valid answer: 30 characters of up
    # to 4 bytes, the keys and punctuation.
    requests = [
        PredictionRequest(
            [image],
            f"Extract the fields ({index}).",
            response_format=FIELDS_SCHEMA,
            generation={"max_new_tokens": 200},
        )
        for index, image in enumerate([NOISE, WHITE, BLACK, NOISE, WHITE, BLACK])
    ]
    answers = model.predict_batch(requests)
    assert all(follows_fields_schema(answer.text) for answer in answers), [a.text for a in answers]
    unconstrained = model.predict_batch([PredictionRequest([NOISE], "Extract the fields (0).")])
    assert not follows_fields_schema(unconstrained[0].text)  # the constraint did the work


@pytest.mark.slow
def test_a_character_cut_by_the_token_limit_is_left_out(model_cache: Path) -> None:
    """Three tokens of this answer end inside a multi-byte character: decoded, they end in
    U+FFFD, which the answer leaves out (as vLLM does), so the backends write the same text."""
    model = HFModel("tiny-qwen2-vl", cache_dir=str(model_cache), max_new_tokens=3)
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (56, 56, 3), np.uint8))
    (prediction,) = model.predict_batch([PredictionRequest([noise], "What is it?")])
    decoded = model.processor.tokenizer.decode(prediction.token_ids, skip_special_tokens=True)
    assert decoded.endswith("\ufffd") and len(prediction.token_ids) == 3
    assert prediction.text == decoded.rstrip("\ufffd").strip() != ""


@pytest.mark.slow
def test_a_pad_token_the_model_wrote_is_kept_and_padding_is_not(model_cache: Path) -> None:
    """Idefics3's pad token is no end-of-sequence token: a batch pads finished rows with it, but
    a model may also write it mid-answer (vLLM keeps it there)."""
    import torch

    model = HFModel("tiny-idefics3", cache_dir=str(model_cache))
    pad = model.processor.tokenizer.pad_token_id
    (eos,) = model.model.generation_config.eos_token_id
    assert pad != eos

    def generated(tokens: list[int]) -> list[int]:
        return model._generated(torch.tensor(tokens))

    assert generated([5, pad, 6]) == [5, pad, 6]
    assert generated([5, 6, pad, pad]) == [5, 6]  # a row stopped by a stop string, padded
    assert generated([5, eos, pad, pad]) == [5, eos]
    assert generated([5, pad, eos, 7]) == [5, pad, eos]
    assert generated([pad, pad]) == []


@pytest.mark.slow
def test_a_thinking_models_answer_is_thinking_until_it_writes_the_end_marker(
    model_cache: Path,
) -> None:
    """tiny-qwen3-vl-thinking's real template opens <think> in the prompt: what the model
    writes before </think> is reasoning, and an answer cut before it is truncated, not scored.
    The -Instruct template opens no block."""
    requests = [PredictionRequest([image], "What is it?") for image in (NOISE, BLACK, WHITE)]
    thinking = HFModel("tiny-qwen3-vl-thinking", cache_dir=str(model_cache), max_new_tokens=8)
    end = thinking.processor.tokenizer.convert_tokens_to_ids("</think>")
    for timed in predict_isolated(thinking, requests):
        prediction = timed.prediction
        assert prediction.prompt_opens_reasoning
        if end in prediction.token_ids:  # a random model may write it
            cut = prediction.token_ids.index(end) + 1
            assert (prediction.truncated, prediction.reasoning_tokens) == (False, cut)
        else:  # no answer; truncated where the token limit, not the model, ended it
            assert prediction.text == "" and prediction.reasoning
            assert prediction.truncated == (prediction.completion_tokens == 8)
            assert prediction.reasoning_tokens == prediction.completion_tokens
    instruct = HFModel("tiny-qwen3-vl", cache_dir=str(model_cache), max_new_tokens=8)
    for timed in predict_isolated(instruct, requests):
        assert not timed.prediction.prompt_opens_reasoning and not timed.prediction.truncated


@pytest.mark.slow
def test_upstream_style_calls(model_cache: Path) -> None:
    model = HFModel("tiny-qwen2-vl", cache_dir=str(model_cache), max_new_tokens=8)
    by_path = model.predict_on_image(str(SAMPLE_IMAGE), question="What is the subtotal?")
    (batched,) = model.predict_batch([PredictionRequest([SAMPLE_IMAGE], "What is the subtotal?")])
    assert by_path == batched.text
    assert model.predict_on_images([SAMPLE_IMAGE, SAMPLE_IMAGE], question="Same?") == (
        model.predict_batch([PredictionRequest([SAMPLE_IMAGE] * 2, "Same?")])[0].text
    )
    assert model.framework == "Hugging Face" and model.model_name == "tiny-qwen2-vl"


@pytest.mark.slow
def test_options_and_their_errors(model_cache: Path) -> None:
    model = HFModel("tiny-llava", cache_dir=str(model_cache), max_new_tokens=3)
    assert model.attn_implementation == "sdpa"  # flash-attn is absent on a CPU machine
    assert model.cache_hit is True and model.device == "cpu"
    assert model.predict_batch([PredictionRequest([NOISE], "q")])[0].completion_tokens <= 3
    eager = HFModel("tiny-llava", cache_dir=str(model_cache), attn_implementation="eager")
    assert eager.attn_implementation == "eager"
    with pytest.raises(ValueError, match="dtype must be one of"):
        HFModel("tiny-llava", cache_dir=str(model_cache), dtype="fp8")
    if not _cuda():
        with pytest.raises(ValueError, match="no CUDA GPU is available; use device=cpu"):
            HFModel("tiny-llava", cache_dir=str(model_cache), device="cuda")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("max_pixels", "size"),
    [
        # Qwen2-VL's resize of 300x200 to multiples of 28 within max_pixels: scaled by
        # sqrt(308 * 196 / max_pixels), each side floored to 28s.
        (28 * 28 * 4, (56, 28)),  # / 4.39: 300 -> 2.4 x 28, 200 -> 1.6 x 28
        (28 * 28 * 16, (112, 84)),  # / 2.19: 300 -> 4.9 x 28, 200 -> 3.3 x 28
    ],
)
def test_each_image_size_the_model_received_is_reported(model_cache, max_pixels, size) -> None:
    model = HFModel(
        "tiny-qwen2-vl",
        cache_dir=str(model_cache),
        max_new_tokens=2,
        processor_kwargs={"min_pixels": 28 * 28, "max_pixels": max_pixels},
    )
    picture = Image.new("RGB", (300, 200))
    one, two = model.predict_batch(
        [PredictionRequest([picture], "q"), PredictionRequest([picture, BLACK], "q")]
    )
    assert one.image_sizes == (size,)
    assert two.image_sizes == (size, (56, 56))
    llava = HFModel("tiny-llava", cache_dir=str(model_cache), max_new_tokens=2)
    assert llava.predict_batch([PredictionRequest([picture], "q")])[0].image_sizes == ((56, 56),)


@pytest.mark.slow
def test_chat_template_options_reach_the_template_per_model_and_request(model_cache) -> None:
    # Qwen2-VL's template numbers the pictures ("Picture 1: ") when add_vision_id is set.
    def model(**options) -> HFModel:
        return HFModel("tiny-qwen2-vl", cache_dir=str(model_cache), max_new_tokens=2, **options)

    def prompt_tokens(loaded: HFModel, **generation) -> int:
        request = PredictionRequest([BLACK], "q", generation=generation or None)
        return loaded.predict_batch([request])[0].prompt_tokens

    plain, numbered = model(), model(chat_template_kwargs={"add_vision_id": True})
    assert prompt_tokens(numbered) > prompt_tokens(plain)
    assert prompt_tokens(plain, chat_template_kwargs={"add_vision_id": True}) == prompt_tokens(
        numbered
    )
    # The tokens of a reasoning block: up to and including its end marker's.
    tokenizer = plain.processor.tokenizer
    thought, end = (tokenizer.encode(t, add_special_tokens=False) for t in ("x y", "</think>"))
    generated = thought + end + tokenizer.encode("42", add_special_tokens=False)
    assert hf._thinking_tokens(generated, end) == len(thought) + len(end)
    assert hf._thinking_tokens(thought, end) is None


@pytest.mark.slow
def test_sampling_with_a_seed_is_reproducible(model_cache: Path) -> None:
    def sample() -> str:
        model = HFModel(
            "tiny-llava", cache_dir=str(model_cache), temperature=1.0, seed=7, max_new_tokens=8
        )
        return model.predict_on_image(NOISE, "Describe.")

    assert sample() == sample()


@pytest.mark.slow
def test_a_tiny_model_is_built_into_cache_dir_on_first_use(tmp_path: Path) -> None:
    first = HFModel("tiny-idefics3", cache_dir=str(tmp_path), max_new_tokens=4)
    assert first.cache_hit is False
    assert (tmp_path / "tiny-models" / "tiny-idefics3" / "config.json").is_file()
    second = HFModel("tiny-idefics3", cache_dir=str(tmp_path), max_new_tokens=4)
    assert second.cache_hit is True
    assert first.predict_on_image(NOISE, "q") == second.predict_on_image(NOISE, "q")


# --- weight cache without network -------------------------------------------------------------

# Loaded by Python at start-up from PYTHONPATH: every attempt to open a network connection or
# resolve a host is written to $NETWORK_LOG and refused.
SITECUSTOMIZE = """
import os, socket

def _refuse(*args, **kwargs):
    with open(os.environ["NETWORK_LOG"], "a") as log:
        log.write(f"network use attempted: {args[1:] if len(args) > 1 else args}\\n")
    raise OSError("network disabled by the test")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.getaddrinfo = _refuse
socket.create_connection = _refuse
"""


def run_without_network(
    tmp_path: Path, script: str, **env: str
) -> tuple[subprocess.CompletedProcess, str]:
    blocker = tmp_path / "no_network"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "network.log"
    log.write_text("")
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("HF_HUB_OFFLINE")
    }
    environment.update(PYTHONPATH=f"{blocker}{os.pathsep}{REPO_ROOT}", NETWORK_LOG=str(log), **env)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, log.read_text()


def hub_style_cache(model_cache: Path, tmp_path: Path, repo_id: str) -> Path:
    """A cache_dir holding ``repo_id`` exactly as huggingface_hub lays out a download."""
    cache_dir = tmp_path / "hub_cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(
        tiny.ensure_tiny_model("tiny-qwen2-vl", model_cache), repo / "snapshots" / commit
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return cache_dir


@pytest.mark.slow
def test_a_cached_hub_model_loads_with_no_network_call(model_cache: Path, tmp_path: Path) -> None:
    cache_dir = hub_style_cache(model_cache, tmp_path, "acme/tiny-vl")
    result, network_log = run_without_network(
        tmp_path,
        f"""
        from model_interface.backends.hf import HFModel
        model = HFModel("acme/tiny-vl", cache_dir={str(cache_dir)!r}, max_new_tokens=4)
        print("cache_hit", model.cache_hit)
        print("answer", repr(model.predict_on_image({str(SAMPLE_IMAGE)!r}, "Total?")))
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cache_hit True" in result.stdout and "answer '" in result.stdout
    assert network_log == ""  # not one connection was attempted


@pytest.mark.slow
@pytest.mark.parametrize("offline", ["0", "1"])
def test_a_missing_model_without_network_says_how_to_fetch_it(tmp_path: Path, offline) -> None:
    result, _ = run_without_network(
        tmp_path,
        f"""
        from model_interface.backends.hf import HFModel
        from model_interface.cache import ModelNotCachedError
        try:
            HFModel("acme/not-downloaded", cache_dir={str(tmp_path / "empty")!r})
        except ModelNotCachedError as error:
            print(error)
        """,
        HF_HUB_OFFLINE=offline,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout
    assert "'acme/not-downloaded' is not in cache_dir" in message
    assert str(tmp_path / "empty") in message
    assert "python -m model_interface.cache download acme/not-downloaded --cache-dir" in message


@pytest.mark.gpu
def test_a_tiny_model_runs_on_cuda_in_bfloat16(model_cache: Path) -> None:
    model = HFModel("tiny-qwen2-vl", cache_dir=str(model_cache), dtype="bfloat16", device="cuda")
    assert model.model.device.type == "cuda" and str(model.model.dtype) == "torch.bfloat16"
    predictions = model.predict_batch(
        [PredictionRequest([NOISE], "q"), PredictionRequest([WHITE], "r")]
    )
    assert all(prediction.completion_tokens > 0 for prediction in predictions)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
