"""The vLLM and SGLang backends.

Without a GPU (and without vllm / sglang installed) the pure parts are tested: conversation and
prompt building, sampling and engine options, and turning engine outputs into predictions. The
tests marked ``gpu`` run a tiny model through the real engines when those are installed.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import re
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from PIL import Image

from model_interface.backends import sglang as sglang_backend
from model_interface.backends import vllm as vllm_backend
from model_interface.backends.dummy import DummyModel
from model_interface.backends.sglang import SGLangModel
from model_interface.backends.vllm import VLLMModel
from model_interface.chat import template_messages
from model_interface.model_interface import (
    GENERATION_PARAMETERS,
    GenerationSettings,
    Prediction,
    PredictionRequest,
    UnsupportedRequest,
)
from model_interface.schema import grammar_schema
from model_interface.tiny import ensure_tiny_model
from tests.support.helpers import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf" / "model"
RED, GREEN, BLUE = (200, 30, 30), (30, 200, 30), (30, 30, 200)


def picture(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (56, 56), colour)


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    picture(colour).save(buffer, format="PNG")
    return buffer.getvalue()


# --- vLLM: conversations ---------------------------------------------------------------------


def test_vllm_conversation_without_system_prompt_is_one_user_turn():
    messages = vllm_backend.conversation("", PredictionRequest([picture(RED)], "What is it?"))
    assert [message["role"] for message in messages] == ["user"]
    image_part, text_part = messages[0]["content"]
    assert image_part["type"] == "image_pil"
    assert isinstance(image_part["image_pil"], Image.Image)
    assert text_part == {"type": "text", "text": "What is it?"}


def test_vllm_conversation_puts_system_prompt_first():
    messages = vllm_backend.conversation("Be brief.", PredictionRequest([picture(RED)], "Hi"))
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["role"] == "user"


def test_vllm_conversation_keeps_image_order_and_loads_every_input_kind(tmp_path):
    path = tmp_path / "green.png"
    picture(GREEN).save(path)
    request = PredictionRequest([png_bytes(RED), str(path), picture(BLUE)], "Compare them.")
    content = vllm_backend.conversation("", request)[0]["content"]
    assert [part["type"] for part in content] == ["image_pil"] * 3 + ["text"]
    colours = [part["image_pil"].getpixel((0, 0)) for part in content[:3]]
    assert colours == [RED, GREEN, BLUE]
    assert all(part["image_pil"].mode == "RGB" for part in content[:3])


def test_vllm_conversation_without_images_is_text_only():
    content = vllm_backend.conversation("", PredictionRequest([], "Hello"))[0]["content"]
    assert content == [{"type": "text", "text": "Hello"}]


# --- vLLM: sampling and engine options -------------------------------------------------------


def test_vllm_sampling_greedy_by_default():
    assert GenerationSettings().sampling_options() == {
        "max_tokens": 512,
        "temperature": 0.0,
    }


def test_vllm_sampling_greedy_ignores_sampling_only_settings():
    settings = GenerationSettings(max_new_tokens=7, top_p=0.5, top_k=3)
    assert settings.sampling_options() == {"max_tokens": 7, "temperature": 0.0}


def test_vllm_sampling_maps_every_setting():
    settings = GenerationSettings(
        max_new_tokens=64,
        temperature=0.7,
        top_p=0.9,
        top_k=20,
        repetition_penalty=1.05,
        seed=123,
        generation_kwargs={"stop": ["</s>"], "min_tokens": 2},
    )
    assert settings.sampling_options() == {
        "max_tokens": 64,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "repetition_penalty": 1.05,
        "seed": 123,
        "stop": ["</s>"],
        "min_tokens": 2,
    }


def test_vllm_generation_kwargs_override_mapped_settings():
    settings = GenerationSettings(max_new_tokens=8, generation_kwargs={"max_tokens": 99})
    assert settings.sampling_options()["max_tokens"] == 99


def test_vllm_engine_options_leave_unset_options_to_vllm():
    options = vllm_backend.engine_options("/models/qwen", "/cache")
    assert options == {
        "model": "/models/qwen",
        "download_dir": "/cache",
        "tensor_parallel_size": 1,
        "dtype": "auto",
        "trust_remote_code": False,
    }


@pytest.mark.parametrize(
    ("device", "given", "memory"),
    [
        ("gpu", {}, {"gpu_memory_utilization": 0.9, "kv_cache_memory_bytes": None}),
        ("cpu", {}, {"gpu_memory_utilization": None, "kv_cache_memory_bytes": 512 * 2**20}),
        (
            "cpu",
            {"kv_cache_memory_bytes": 2**30},
            {"gpu_memory_utilization": None, "kv_cache_memory_bytes": 2**30},
        ),
        (
            "gpu",
            {"gpu_memory_utilization": 0.5},
            {"gpu_memory_utilization": 0.5, "kv_cache_memory_bytes": None},
        ),
        (
            "gpu",
            {"kv_cache_memory_bytes": 2**32},
            {"gpu_memory_utilization": None, "kv_cache_memory_bytes": 2**32},
        ),
    ],
)
def test_vllm_memory_fits_the_device(device, given, memory):
    """A share of GPU memory on a GPU; on the CPU a share would be of the host's RAM (90% of it
    fails to start), so the KV cache gets a size."""
    settings = {"gpu_memory_utilization": None, "kv_cache_memory_bytes": None, **given}
    assert vllm_backend.memory_options(device, **settings) == memory


def test_vllm_engine_options_pass_limits_and_engine_kwargs():
    options = vllm_backend.engine_options(
        "/m",
        "/c",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.5,
        max_model_len=4096,
        limit_mm_per_prompt={"image": 4},
        dtype="bfloat16",
        engine_kwargs={"enforce_eager": True, "compilation_config": {"level": 0}},
    )
    assert options["limit_mm_per_prompt"] == {"image": 4}
    assert options["compilation_config"] == {"level": 0}
    assert options["enforce_eager"] is True
    assert options["max_model_len"] == 4096
    assert options["tensor_parallel_size"] == 2
    assert options["gpu_memory_utilization"] == 0.5
    assert options["dtype"] == "bfloat16"


def test_vllm_engine_kwargs_override_named_options():
    options = vllm_backend.engine_options("/m", "/c", engine_kwargs={"download_dir": "/elsewhere"})
    assert options["download_dir"] == "/elsewhere"


# --- vLLM: outputs ---------------------------------------------------------------------------


def request_output(
    text: str, prompt_ids: list[int] | None, token_ids: list[int], prompt: str | None = None
):
    """Shaped like ``vllm.RequestOutput`` (only the fields the backend reads)."""
    completion = SimpleNamespace(text=text, token_ids=token_ids)
    return SimpleNamespace(prompt=prompt, prompt_token_ids=prompt_ids, outputs=[completion])


THINK = ("<think>", "</think>")


def test_vllm_outputs_become_predictions_in_order():
    outputs = [
        request_output(" first \n", [1, 2, 3], [7, 8]),
        request_output("second", [1, 2, 3, 4, 5], [9]),
    ]
    assert vllm_backend.predictions_from_outputs(outputs, [THINK, None]) == [
        Prediction("first", prompt_tokens=3, completion_tokens=2, token_ids=(7, 8)),
        Prediction("second", prompt_tokens=5, completion_tokens=1, token_ids=(9,)),
    ]


def test_vllm_a_prompt_that_opens_a_reasoning_block_is_marked():
    outputs = [
        request_output("a", [1], [2], prompt="<|im_start|>assistant\n<think>\n"),
        request_output("b", [1], [2], prompt="<think>\n\n</think>\n\n"),  # closed: no thinking
        request_output("c", [1], [2], prompt="<|im_start|>assistant\n<think>\n"),
    ]
    opens = vllm_backend.predictions_from_outputs(outputs, [THINK, THINK, None])
    assert [prediction.prompt_opens_reasoning for prediction in opens] == [True, False, False]


def test_vllm_unknown_prompt_length_is_none():
    (prediction,) = vllm_backend.predictions_from_outputs([request_output("x", None, [1])], [None])
    assert prediction.prompt_tokens is None
    assert prediction.completion_tokens == 1


# --- SGLang: prompts and images --------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_processor(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    path = ensure_tiny_model("tiny-qwen2-vl", tmp_path_factory.mktemp("cache"))
    return transformers.AutoProcessor.from_pretrained(path)


def test_sglang_chat_messages_without_system_prompt():
    messages = template_messages("", PredictionRequest([picture(RED)], "What?"))
    assert messages == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}
    ]


def test_sglang_chat_messages_with_system_prompt_and_two_images():
    request = PredictionRequest([picture(RED), picture(BLUE)], "Compare.")
    messages = template_messages("Be brief.", request)
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert messages[1]["content"] == [
        {"type": "image"},
        {"type": "image"},
        {"type": "text", "text": "Compare."},
    ]


def test_sglang_prompt_uses_the_model_chat_template(qwen_processor):
    request = PredictionRequest([picture(RED), picture(BLUE)], "What is the total?")
    text = sglang_backend.prompt_text(qwen_processor, "Be brief.", request)
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\n{image}{image}What is the total?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_sglang_prompt_with_one_image_and_no_system_prompt(qwen_processor):
    text = sglang_backend.prompt_text(qwen_processor, "", PredictionRequest([picture(RED)], "Hi"))
    assert text.count("<|image_pad|>") == 1
    assert "Be brief." not in text
    assert text.endswith("Hi<|im_end|>\n<|im_start|>assistant\n")


def test_sglang_image_data_is_one_list_per_request_in_order():
    requests = [
        PredictionRequest([png_bytes(RED)], "a"),
        PredictionRequest([], "b"),
        PredictionRequest([picture(GREEN), picture(BLUE)], "c"),
    ]
    data = sglang_backend.image_data(requests)
    assert [len(images) for images in data] == [1, 0, 2]
    colours = [[image.getpixel((0, 0)) for image in images] for images in data]
    assert colours == [[RED], [], [GREEN, BLUE]]
    assert all(isinstance(image, Image.Image) for images in data for image in images)


def test_sglang_image_data_is_none_without_images():
    assert sglang_backend.image_data([PredictionRequest([], "a")]) is None


# --- SGLang: sampling and engine options -----------------------------------------------------


def test_sglang_takes_a_requests_own_settings_but_not_its_own_seed():
    settings = GenerationSettings(max_new_tokens=16).with_overrides(
        {"max_new_tokens": 4, "stop": ["."]}
    )
    assert sglang_backend.sampling_params(settings) == {
        "max_new_tokens": 4,
        "temperature": 0.0,
        "stop": ["."],
    }
    with pytest.raises(UnsupportedRequest, match="seed=3 differs from the model's seed=None"):
        sglang_backend.sampling_params(settings.with_overrides({"seed": 3}))


def test_vllm_sampling_options_apply_each_requests_own_settings():
    model = DummyModel("d", max_new_tokens=16, temperature=0.5, seed=1)
    own = {"max_new_tokens": 2, "temperature": 0}
    requests = [PredictionRequest([], "a"), PredictionRequest([], "b", generation=own)]
    assert vllm_backend.sampling_options(model, requests) == [
        {"max_tokens": 16, "temperature": 0.5, "top_p": 1.0, "seed": 1},
        {"max_tokens": 2, "temperature": 0.0, "seed": 1},
    ]


def test_sglang_sampling_greedy_by_default():
    assert sglang_backend.sampling_params(GenerationSettings(max_new_tokens=16)) == {
        "max_new_tokens": 16,
        "temperature": 0.0,
    }


def test_sglang_sampling_maps_every_setting():
    settings = GenerationSettings(
        max_new_tokens=32,
        temperature=0.6,
        top_p=0.8,
        top_k=40,
        repetition_penalty=1.1,
        seed=7,
        generation_kwargs={"stop": ["\n\n"], "sampling_seed": 7},
    )
    assert sglang_backend.sampling_params(settings, engine_seed=7) == {
        "max_new_tokens": 32,
        "temperature": 0.6,
        "top_p": 0.8,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "stop": ["\n\n"],
        "sampling_seed": 7,
    }


def test_sglang_engine_options_map_names():
    options = sglang_backend.engine_options(
        "/m",
        "/c",
        tensor_parallel_size=2,
        mem_fraction_static=0.7,
        max_model_len=8192,
        dtype="bfloat16",
        trust_remote_code=True,
        seed=3,
        engine_kwargs={"disable_cuda_graph": True},
    )
    assert options == {
        "model_path": "/m",
        "download_dir": "/c",
        "tp_size": 2,
        "mem_fraction_static": 0.7,
        "context_length": 8192,
        "dtype": "bfloat16",
        "trust_remote_code": True,
        "random_seed": 3,
        "disable_cuda_graph": True,
    }


def test_sglang_engine_options_leave_unset_options_to_sglang():
    options = sglang_backend.engine_options("/m", "/c")
    assert set(options) == {"model_path", "download_dir", "tp_size", "dtype", "trust_remote_code"}


# --- SGLang: outputs -------------------------------------------------------------------------


def test_sglang_outputs_become_predictions_in_order():
    outputs = [
        {"text": " one ", "meta_info": {"prompt_tokens": 12, "completion_tokens": 3}},
        {"text": "two", "meta_info": {"prompt_tokens": 20, "completion_tokens": 1}},
    ]
    assert sglang_backend.predictions_from_outputs(outputs, [False, True]) == [
        Prediction("one", prompt_tokens=12, completion_tokens=3),
        Prediction("two", prompt_tokens=20, completion_tokens=1, prompt_opens_reasoning=True),
    ]


# --- without the frameworks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_class", "package", "extra"),
    [
        (VLLMModel, "vllm", "model-interface[vllm]"),
        (SGLangModel, "sglang", "model-interface[sglang]"),
    ],
)
def test_missing_framework_names_the_extra(tmp_path, model_class, package, extra):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ImportError, match=re.escape(f"pip install '{extra}'")) as error:
        model_class("tiny-qwen2-vl", cache_dir=str(tmp_path))
    assert "CUDA GPU" in str(error.value)
    assert not any(tmp_path.iterdir()), "nothing should be built or downloaded before the check"


def test_frameworks_are_described():
    assert VLLMModel.framework == "vLLM"
    assert SGLangModel.framework == "SGLang"


@pytest.mark.parametrize(
    ("config", "name", "model_class"),
    [
        ("vllm_qwen2_5_vl_7b.yaml", "vllm", VLLMModel),
        ("sglang_qwen2_5_vl_7b.yaml", "sglang", SGLangModel),
    ],
)
def test_model_config_matches_the_class(config, name, model_class):
    conf = OmegaConf.load(CONF_DIR / config)
    assert conf.name == name
    accepted = set(inspect.signature(model_class.__init__).parameters) | set(GENERATION_PARAMETERS)
    assert set(conf.init_params) <= accepted
    assert conf.init_params.model_name == "Qwen/Qwen2.5-VL-7B-Instruct"


# --- on a GPU, with the real engines ---------------------------------------------------------


def check_engine(model) -> None:
    """One image alone, then a batch of three whose answers match each request run alone."""
    single = model.predict_on_image(picture(RED), "Describe the image.")
    assert isinstance(single, str) and single

    requests = [
        PredictionRequest([picture(RED)], "Describe the image."),
        PredictionRequest([picture(GREEN), picture(BLUE)], "What is the total?"),
        PredictionRequest([picture(BLUE)], "Read the document and answer."),
    ]
    batch = model.predict_batch(requests)
    alone = [model.predict_batch([request])[0] for request in requests]
    assert len(batch) == len(requests)
    assert [p.text for p in batch] == [p.text for p in alone]
    assert [p.prompt_tokens for p in batch] == [p.prompt_tokens for p in alone]
    for prediction in batch:
        assert prediction.text and prediction.error is None
        assert prediction.prompt_tokens > 0 and prediction.completion_tokens > 0
    # The two-image request has the longest prompt: the order really is the requests' order.
    assert batch[1].prompt_tokens > max(batch[0].prompt_tokens, batch[2].prompt_tokens)


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_runs_a_tiny_model(tmp_path):
    pytest.importorskip("vllm")
    path = ensure_tiny_model("tiny-qwen2-vl", tmp_path)
    model = VLLMModel(
        str(path),
        cache_dir=str(tmp_path),
        max_new_tokens=8,
        # float32 (vLLM's FlexAttention) keeps greedy decoding identical across batch shapes.
        dtype="float32",
        gpu_memory_utilization=0.3,
        max_model_len=1024,
        limit_mm_per_prompt={"image": 2},
        engine_kwargs={"enforce_eager": True},
    )
    with model:
        assert model.cache_hit is True
        check_engine(model)
    assert model.llm is None


@pytest.mark.gpu
@pytest.mark.slow
def test_sglang_runs_a_tiny_model(tmp_path):
    pytest.importorskip("sglang")
    path = ensure_tiny_model("tiny-qwen2-vl", tmp_path)
    model = SGLangModel(
        str(path),
        cache_dir=str(tmp_path),
        max_new_tokens=8,
        mem_fraction_static=0.3,
        max_model_len=1024,
        engine_kwargs={"disable_cuda_graph": True},
    )
    with model:
        assert model.cache_hit is True
        check_engine(model)
    assert model.engine is None


SCHEMA = {"type": "object", "properties": {"total": {"type": "string"}}, "required": ["total"]}


def test_a_json_schema_goes_to_each_engines_structured_outputs():
    settings = GenerationSettings(max_new_tokens=8).with_overrides({"json_schema": SCHEMA})
    assert json.loads(sglang_backend.sampling_params(settings)["json_schema"]) == SCHEMA

    class Params:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    # vLLM >= 0.10.2 names it StructuredOutputsParams; before, GuidedDecodingParams.
    newer = SimpleNamespace(StructuredOutputsParams=Params)
    # Compiled as the Hugging Face backend compiles it: the same strings, no optional spaces.
    options = vllm_backend.options_for(settings, newer)
    assert options["structured_outputs"].kwargs == {"json": grammar_schema(SCHEMA)}
    assert "json_schema" not in options and options["max_tokens"] == 8
    assert vllm_backend.structured_outputs_config(newer) == {
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}
    }
    older = SimpleNamespace(GuidedDecodingParams=Params)
    assert vllm_backend.options_for(settings, older)["guided_decoding"].kwargs == {
        "json": grammar_schema(SCHEMA),
        "disable_any_whitespace": True,
    }
    assert vllm_backend.structured_outputs_config(older) == {}
    assert "structured_outputs" not in vllm_backend.options_for(GenerationSettings(), newer)
