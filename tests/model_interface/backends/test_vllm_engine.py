"""The vLLM backend with a real engine: vLLM's CPU build runs it here, a GPU build anywhere.

Marked ``vllm``: they run where vLLM is installed (``bash scripts/vllm_cpu_env.sh`` makes such
an environment; CI runs them there) and are skipped elsewhere. One engine serves the module's
tests: an engine starts in seconds in process, but every start costs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import pytest
from PIL import Image

from model_interface.backends.vllm import VLLMModel
from model_interface.model_interface import PredictionRequest
from model_interface.tiny import TINY_MODEL_NAMES

pytestmark = [pytest.mark.vllm, pytest.mark.slow]  # every test here starts an engine

RED, GREEN, BLUE = (200, 30, 30), (30, 200, 30), (30, 30, 200)
# float32 and eager execution: greedy answers that do not depend on the batch's shape.
ENGINE = {
    "dtype": "float32",
    "max_model_len": 1024,
    "multiprocessing": False,
    "limit_mm_per_prompt": {"image": 2},
    "engine_kwargs": {"enforce_eager": True},
}


def picture(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (56, 56), colour)


@pytest.fixture(scope="module")
def qwen(model_cache) -> Iterator[VLLMModel]:
    model = VLLMModel("tiny-qwen2-vl", cache_dir=str(model_cache), max_new_tokens=8, **ENGINE)
    yield model
    model.close()


def test_a_batch_is_answered_as_each_request_alone(qwen) -> None:
    requests = [
        PredictionRequest([picture(RED)], "What is the total?"),
        PredictionRequest([picture(GREEN), picture(BLUE)], "What is the total?"),
        PredictionRequest([], "What is the total?"),  # text only
        PredictionRequest([picture(BLUE)], "Read the document and answer."),
    ]
    batch = qwen.predict_batch(requests)
    alone = [qwen.predict_batch([request])[0] for request in requests]
    assert [p.text for p in batch] == [p.text for p in alone]
    assert [p.prompt_tokens for p in batch] == [p.prompt_tokens for p in alone]
    assert all(p.completion_tokens and p.error is None for p in batch)
    # an image is 4 tokens after Qwen's 2x2 merge, and its start and end markers: 6 in all
    assert batch[1].prompt_tokens - batch[0].prompt_tokens == 6
    assert batch[0].prompt_tokens - batch[2].prompt_tokens == 6


def test_a_requests_own_settings_apply_to_it_alone(qwen) -> None:
    image = [picture(RED)]
    short, default = qwen.predict_batch(
        [
            PredictionRequest(image, "Describe the image.", generation={"max_new_tokens": 2}),
            PredictionRequest(image, "Describe the image."),
        ]
    )
    assert short.completion_tokens == 2 and default.completion_tokens == 8
    assert default.text.startswith(short.text)  # greedy: the same first tokens
    stop = default.text[len(default.text) // 2 :][:2]
    stopped = qwen.predict_batch(
        [PredictionRequest(image, "Describe the image.", generation={"stop": [stop]})]
    )[0]
    assert stop not in stopped.text and default.text.startswith(stopped.text)


def test_the_system_prompt_is_part_of_the_prompt(model_cache, qwen) -> None:
    request = PredictionRequest([picture(GREEN)], "What is the total?")
    plain = qwen.predict_batch([request])[0]
    qwen.system_prompt = "Answer in one word."
    try:
        told = qwen.predict_batch([request])[0]
    finally:
        qwen.system_prompt = ""
    assert told.prompt_tokens > plain.prompt_tokens


def test_chat_template_options_apply_to_their_own_requests(qwen) -> None:
    # Qwen2-VL's template numbers the pictures ("Picture 1: ") when add_vision_id is set.
    image = [picture(RED)]
    numbered = {"chat_template_kwargs": {"add_vision_id": True}}
    plain, told, plain_again = qwen.predict_batch(
        [
            PredictionRequest(image, "What is the total?"),
            PredictionRequest(image, "What is the total?", generation=numbered),
            PredictionRequest(image, "What is the total?"),
        ]
    )
    assert told.prompt_tokens > plain.prompt_tokens == plain_again.prompt_tokens


def test_a_json_schema_makes_every_answer_valid(qwen) -> None:
    schema = {
        "type": "object",
        "properties": {name: {"type": "string", "maxLength": 12} for name in ("total", "date")},
        "required": ["total", "date"],
        "additionalProperties": False,
    }
    requests = [
        PredictionRequest(
            [picture(colour)],
            f"Extract the fields as JSON ({index}).",
            response_format=schema,
            generation={"max_new_tokens": 64},
        )
        for index, colour in enumerate([RED, GREEN, BLUE] * 3)
    ]
    for prediction in qwen.predict_batch(requests):
        jsonschema.validate(json.loads(prediction.text), schema)  # raises if not


# Where vLLM's CPU build and transformers differ by design, not by a wrong tiny model:
# LLaVA 1.5's template writes no BOS; transformers' processor adds one, vLLM's chat does not.
BOS_ONLY_FROM_TRANSFORMERS = {"tiny-llava"}
# Gemma 3 attends both ways among one image's tokens; vLLM's CPU attention only causally.
IMAGES_ATTENDED_CAUSALLY_BY_VLLM_CPU = {"tiny-gemma3"}


@pytest.mark.parametrize("name", TINY_MODEL_NAMES)
def test_every_tiny_family_answers_in_vllm_as_in_transformers(model_cache, name) -> None:
    """A tiny model is true to its family's checkpoints: vLLM, which reads the weights, tokens
    and processor settings with its own code, generates the very tokens transformers does."""
    import transformers

    from model_interface.backends.hf import HFModel
    from model_interface.tiny import ensure_tiny_model

    path = ensure_tiny_model(name, model_cache)
    _, loading = transformers.AutoModelForImageTextToText.from_pretrained(
        path, output_loading_info=True
    )
    assert not any(loading.values()), loading  # no missing, unexpected or mismatched weight
    document = Image.new("RGB", (200, 120), BLUE)  # resized, or cut into tiles, by the processor
    requests = [
        PredictionRequest([picture(RED)], "What is it?"),
        PredictionRequest([picture(GREEN), picture(BLUE)], "Compare the two."),
        PredictionRequest([document], "Read the document."),
        PredictionRequest([], "What is two plus two?"),
    ]
    model = VLLMModel(name, cache_dir=str(model_cache), max_new_tokens=8, **ENGINE)
    with model:
        by_vllm = model.predict_batch(requests)
    assert model.llm is None
    hf = HFModel(name, cache_dir=str(model_cache), max_new_tokens=8, dtype="float32")
    by_transformers = hf.predict_batch(requests)
    assert all(answer.completion_tokens for answer in by_vllm)
    extra_bos = 1 if name in BOS_ONLY_FROM_TRANSFORMERS else 0
    assert [a.prompt_tokens + extra_bos for a in by_vllm] == [
        a.prompt_tokens for a in by_transformers
    ]
    if name in BOS_ONLY_FROM_TRANSFORMERS:
        return  # other prompts, other answers
    if name in IMAGES_ATTENDED_CAUSALLY_BY_VLLM_CPU:
        by_vllm, by_transformers = by_vllm[-1:], by_transformers[-1:]  # the text-only request
    assert [a.token_ids for a in by_vllm] == [a.token_ids for a in by_transformers]


def test_a_thinking_models_cut_answer_is_truncated_in_vllm_too(model_cache) -> None:
    """vLLM renders Qwen3-VL-Thinking's template, which opens <think> in the prompt: the
    backend sees it there, so an answer cut before </think> is thinking, not an answer."""
    from model_interface.model_interface import predict_isolated

    model = VLLMModel(
        "tiny-qwen3-vl-thinking", cache_dir=str(model_cache), max_new_tokens=8, **ENGINE
    )
    with model:
        end = model.llm.get_tokenizer().convert_tokens_to_ids("</think>")
        answers = predict_isolated(model, [PredictionRequest([picture(RED)], "What is it?")] * 2)
    for timed in answers:
        prediction = timed.prediction
        assert prediction.prompt_opens_reasoning
        unfinished = end not in prediction.token_ids
        assert prediction.truncated == (unfinished and prediction.completion_tokens == 8)
        if unfinished:
            assert prediction.text == "" and prediction.reasoning


def test_a_closed_engine_refuses_and_the_next_one_starts(model_cache) -> None:
    """A sweep closes one model before it loads the next, in the same process."""
    first = VLLMModel("tiny-smolvlm", cache_dir=str(model_cache), max_new_tokens=2, **ENGINE)
    first.close()
    with pytest.raises(RuntimeError, match="is closed"):
        first.predict_batch([PredictionRequest([], "Hi")])
    second = VLLMModel("tiny-idefics3", cache_dir=str(model_cache), max_new_tokens=2, **ENGINE)
    with second:
        assert second.predict_batch([PredictionRequest([], "Hi")])[0].completion_tokens


def test_an_engine_that_cannot_start_says_what_to_set(model_cache) -> None:
    with pytest.raises(RuntimeError) as refused:
        VLLMModel(
            "tiny-qwen2-vl", cache_dir=str(model_cache), **{**ENGINE, "kv_cache_memory_bytes": 4096}
        )
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("vLLM could not start tiny-qwen2-vl on the cpu (")
    assert message.endswith(
        "on the CPU the KV cache takes kv_cache_memory_bytes (4096) of the host's memory and must "
        "hold max_model_len (1024) tokens: lower max_model_len or raise kv_cache_memory_bytes; "
        "vLLM's CPU attention takes head sizes of 32, 64, 80, ... only"
    )


def test_the_runner_with_vllm_writes_what_it_writes_with_transformers_and_the_same_answers(
    model_cache, tmp_path, capsys
) -> None:
    """The tiny Qwen2-VL in both backends, float32 and greedy, on the 48 sample questions."""
    from runners import report
    from runners.reports.compare import compare
    from runners.reports.read import read_run
    from runners.run import run_experiment
    from tests.support.helpers import make_config, read_predictions

    hf, vllm = tmp_path / "hf", tmp_path / "vllm"
    run_experiment(make_config(model_cache, "model=tiny_qwen2_vl"), hf)
    row = run_experiment(make_config(model_cache, "model=vllm_tiny_qwen2_vl"), vllm)
    assert row["status"] == "ok" and row["framework"] == "vLLM"
    assert sorted(path.name for path in vllm.iterdir()) == sorted(
        path.name for path in hf.iterdir()
    )
    a, b = read_predictions(hf), read_predictions(vllm)
    assert (a["prompt_tokens"] == b["prompt_tokens"]).all()
    # The parity report: every answer the same as written, and so every score.
    capsys.readouterr()  # what the engine printed
    assert report.main([str(hf), str(vllm), "--out", str(tmp_path / "report")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "answers: 48 of 48 the same, 0 different"
    pair = compare(read_run(hf), read_run(vllm))
    assert pair.answers.as_written == 48 and pair.answers.same_token_count == 48
    assert all(metric.mean_a == metric.mean_b for metric in pair.metrics)


def test_the_memory_of_the_engines_processes_counts_in_the_peak(model_cache) -> None:
    """With vLLM's default engine process, most of the memory is not the runner's own."""
    import os

    from model_interface.model_utils import _peak_rss_mb, _rss_bytes, measure, process_tree

    with measure() as measured:
        model = VLLMModel(
            "tiny-qwen2-vl",
            cache_dir=str(model_cache),
            max_new_tokens=4,
            **{**ENGINE, "multiprocessing": True},
        )
        with model:
            model.predict_batch([PredictionRequest([picture(RED)], "What is it?")])
            engine = process_tree(os.getpid()) - {os.getpid()}
            engine_mb = sum(map(_rss_bytes, engine)) / 2**20
        own_peak_mb = _peak_rss_mb()
    assert engine and engine_mb > 100
    assert measured.peak_rss_mb > own_peak_mb + 0.8 * engine_mb


def test_the_readmes_vllm_commands_run(model_cache, tmp_path) -> None:
    import shlex

    from tests.support.helpers import read_predictions, run_cli
    from tests.support.readme import readme_commands

    commands = [command for command in readme_commands() if "model=vllm_tiny" in command]
    assert commands
    for number, command in enumerate(commands):
        arguments = shlex.split(command, comments=True)[3:]
        result = run_cli(
            *arguments,
            "runner.limit=2",
            f"run_name=readme_{number}",
            cwd=tmp_path,
            cache_dir=model_cache,
        )
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}"
        predictions = read_predictions(tmp_path / "outputs" / f"readme_{number}")
        assert set(predictions["framework"]) == {"vLLM"} and (predictions["error"] == "").all()
