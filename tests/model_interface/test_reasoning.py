"""A reasoning model's thinking told apart from its answer (model_interface.split_reasoning):
in process, through runners.serve and the OpenAI client (reasoning_content), and in a run."""

from __future__ import annotations

import json

import httpx
import pytest
from PIL import Image

from model_interface.backends.openai_api import OpenAIModel
from model_interface.model_interface import (
    Prediction,
    PredictionRequest,
    predict_isolated,
    prompt_opens_reasoning,
    split_reasoning,
)
from tests.support.helpers import (
    read_metrics,
    read_predictions,
    run_cli,
    serve_in_thread,
    write_dataset,
)
from tests.support.wrappers import Thinks

MARKERS = ("<think>", "</think>")
PICTURE = Image.new("RGB", (8, 8))


@pytest.mark.parametrize(
    ("text", "answer", "reasoning", "truncated"),
    [
        ("<think>long</think>42", "42", "long", False),
        ("  <think>\nstep 1\nstep 2\n</think>\n\n42 ", "42", "step 1\nstep 2", False),
        ("<think>long and never", "", "long and never", True),  # cut inside the thinking
        ("<think></think>42", "42", "", False),  # thinking switched off: an empty block
        ("opened by the template</think>42", "42", "opened by the template", False),
        ("42", "42", None, False),  # no thinking at all
        ("42 <think>later</think>", "42 <think>later</think>", None, False),  # not at the start
    ],
)
def test_the_thinking_is_split_from_the_answer(text, answer, reasoning, truncated) -> None:
    split = split_reasoning(Prediction(text, completion_tokens=9), MARKERS, max_new_tokens=9)
    assert (split.text, split.reasoning, split.truncated) == (answer, reasoning, truncated)
    assert split.reasoning_tokens == (9 if truncated else None)  # cut: every token thought


@pytest.mark.parametrize(
    ("completion_tokens", "max_new_tokens", "truncated"),
    [(9, 9, True), (5, 9, False), (None, 9, True), (5, None, True)],
)
def test_unfinished_thinking_is_truncated_where_the_token_limit_cut_it(
    completion_tokens, max_new_tokens, truncated
) -> None:
    """Thinking the model ended itself, before the limit, is no answer but no cut either (a
    server says finish_reason 'stop'); where the length or the limit is unknown, it counts as
    cut."""
    prediction = Prediction("<think>long and never", completion_tokens=completion_tokens)
    split = split_reasoning(prediction, MARKERS, max_new_tokens)
    assert (split.text, split.reasoning, split.truncated) == ("", "long and never", truncated)


@pytest.mark.parametrize(
    ("text", "answer", "reasoning", "truncated"),
    [
        ("step 1</think>\n\n42", "42", "step 1", False),
        ("step 1, step 2, and never", "", "step 1, step 2, and never", True),
        ("<think>again</think>42", "42", "again", False),
    ],
)
def test_a_block_the_prompt_opened_is_thinking_until_it_ends(
    text, answer, reasoning, truncated
) -> None:
    """Qwen3-VL-Thinking's template ends the prompt with <think>: an answer cut before
    </think> is thinking, never an answer to score."""
    split = split_reasoning(Prediction(text, prompt_opens_reasoning=True), MARKERS)
    assert (split.text, split.reasoning, split.truncated) == (answer, reasoning, truncated)


@pytest.mark.parametrize(
    ("prompt", "opens"),
    [
        ("<|im_start|>assistant\n<think>\n", True),
        ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),  # thinking switched off
        ("<|im_start|>user\n<think>a</think>b<|im_end|>\n<|im_start|>assistant\n", False),
        ("<|im_start|>user\nWhat does <think> mean?<|im_end|>\n<|im_start|>assistant\n", False),
        ("<|im_start|>assistant\n", False),
        (None, False),  # a backend that can't see its prompt
    ],
)
def test_whether_a_prompt_opens_a_reasoning_block(prompt, opens) -> None:
    assert prompt_opens_reasoning(prompt, MARKERS) is opens
    assert prompt_opens_reasoning(prompt, None) is False


def test_markers_are_settable_and_none_turns_the_split_off() -> None:
    text = "<reasoning>hm</reasoning>42"
    assert split_reasoning(Prediction(text), ("<reasoning>", "</reasoning>")).text == "42"
    assert split_reasoning(Prediction(text), MARKERS).text == text
    assert split_reasoning(Prediction("<think>a</think>b"), None).text == "<think>a</think>b"
    # A backend's own split (a server's reasoning_content) and failures are left as they are.
    done = Prediction("42", reasoning="<think>x</think>")
    assert split_reasoning(done, MARKERS) == done


def test_every_prediction_the_runner_or_server_gets_is_split() -> None:
    model = Thinks("thinks", reasoning_markers=["<think>", "</think>"])
    answered, cut, stopped = predict_isolated(
        model,
        [PredictionRequest([PICTURE], q) for q in ("q", "cut q", "stop q")],
    )
    assert (answered.prediction.text, answered.prediction.reasoning) == ("42", "long thought {}")
    assert (cut.prediction.text, cut.prediction.truncated) == ("", True)
    # Ended inside the thinking before the token limit: no answer, but not cut by the limit.
    assert (stopped.prediction.text, stopped.prediction.truncated) == ("", False)
    assert stopped.prediction.reasoning == "long thought {}"
    plain = Thinks("thinks", reasoning_markers=None)
    (raw,) = predict_isolated(plain, [PredictionRequest([PICTURE], "q")])
    assert raw.prediction.text == "<think>long thought {}</think>42"
    with pytest.raises(ValueError, match="reasoning_markers must be two non-empty strings"):
        Thinks("thinks", reasoning_markers=["<think>"])


def test_through_runners_serve_and_the_client_the_thinking_is_reasoning_content() -> None:
    requests = [
        PredictionRequest([PICTURE], "q"),
        PredictionRequest([PICTURE], "cut q"),
        PredictionRequest([PICTURE], "q", generation={"chat_template_kwargs": {"mode": "x"}}),
    ]
    with serve_in_thread(Thinks("thinks"), "thinks") as base_url:
        client = OpenAIModel(base_url=base_url, reasoning_markers=None)  # the server split it
        answered, cut, configured = client.predict_batch(requests)
        raw = httpx.post(f"{base_url}/chat/completions", json=client.request_body(requests[0]))
        client.close()
    assert (answered.text, answered.reasoning, answered.truncated) == (
        "42",
        "long thought {}",
        False,
    )
    assert answered.reasoning_tokens is None  # the dummy thinker does not count them
    assert (cut.text, cut.reasoning, cut.truncated) == ("", "long thought {}", True)
    assert cut.reasoning_tokens == cut.completion_tokens == 512  # the default token limit
    # A request's chat-template options reach the model through the client and the server.
    assert configured.reasoning == 'long thought {"mode": "x"}'
    message = raw.json()["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("42", "long thought {}")


@pytest.mark.slow
@pytest.mark.parametrize("through", ["process", "server"])
def test_a_run_scores_the_answer_and_counts_truncated_thinking(through, tmp_path) -> None:
    dataset = write_dataset(
        tmp_path / "data",
        [{"question": "what is 6 x 7?"}, {"question": "cut it: what is 6 x 7?"}],
        images=True,
    )
    model = ["model=custom", "model.class_path=tests.support.wrappers:Thinks"]
    options = ["+model.init_params.chat_template_kwargs.enable_thinking=true"]
    with serve_in_thread(Thinks("thinks"), "thinks") as base_url:
        if through == "server":
            model = ["model=openai_compatible", f"model.init_params.base_url={base_url}"]
        result = run_cli(
            *model,
            *options,
            "dataset=vlmhyperbench",
            f"dataset.root={dataset}",
            f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path,
            cache_dir=tmp_path / "models",
        )
    assert result.returncode == 0, result.stdout[-3000:]
    rows = read_predictions(tmp_path / "run")
    assert rows["prediction"].tolist() == ["42", ""]
    assert rows["reasoning"].tolist() == ['long thought {"enable_thinking": true}'] * 2
    assert rows["truncated"].tolist() == [False, True]
    assert rows["exact_match"].tolist() == [1.0, 0.0]
    metrics = read_metrics(tmp_path / "run")
    assert (metrics["n_truncated"], metrics["n_errors"], metrics["exact_match"]) == (1, 0, 0.5)
    assert "1 of 2 answers are truncated: the model's reasoning never ended" in result.stdout
    assert json.loads((tmp_path / "run" / "fingerprint.json").read_text())["model"]["init_params"][
        "chat_template_kwargs"
    ] == {"enable_thinking": True}


@pytest.mark.slow
def test_a_run_of_the_tiny_thinking_model_counts_its_unfinished_thinking(
    model_cache, tmp_path
) -> None:
    """tiny-qwen3-vl-thinking, with the real -Thinking template, through the runner: a random
    model rarely writes </think> within 16 tokens, so its answers are truncated thinking."""
    from runners.run import run_experiment
    from tests.support.helpers import make_config

    config = make_config(model_cache, "model=tiny_qwen3_vl_thinking", "runner.limit=6")
    row = run_experiment(config, tmp_path)
    rows = read_predictions(tmp_path)
    cut = rows[rows["truncated"]]
    assert len(cut) and (cut["prediction"].fillna("") == "").all()
    assert cut["reasoning"].str.len().gt(0).all()
    assert (cut["reasoning_tokens"] == cut["completion_tokens"]).all()
    assert row["n_truncated"] == read_metrics(tmp_path)["n_truncated"] == len(cut)
