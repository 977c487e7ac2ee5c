"""The prompt builder reproduces the official token ids, ``cond_ids`` and ``seg_ids``.

Two references, both produced by running the official X-SAM code:

* ``../shared/xsam_full_size/prompt_cases.json`` (``XSAM_PROMPT_CASES`` overrides it) with the
  reconstructed Phi-3 tokenizer next to it: every case, its ``eval`` variant (BOS, tensor mode;
  GCG prompt only), plus the ``eval_nobos`` and ``demo`` variants;
* the parity bundle's ``cases/*/case.json`` (``XSAM_PARITY_DIR`` overrides the bundle) with its
  tiny tokenizer.

Each case records the question and answer templates it used; the builder gets them explicitly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from repo_paths import SHARED

from xsam_backend.errors import PromptError
from xsam_backend.xsam.prompting import (
    DEFAULT_ANSWER,
    GENSEG_ANSWERS,
    IMAGE_TOKEN_INDEX,
    PromptEncoder,
    Turn,
    XSamTask,
    clean_category_name,
    gcg_caption,
    gcg_phrases,
    genseg_question,
    task_turns,
)

transformers = pytest.importorskip("transformers")

PROMPT_CASES = Path(os.environ.get("XSAM_PROMPT_CASES", SHARED / "xsam_full_size" / "prompt_cases.json"))
PARITY_DIR = Path(os.environ.get("XSAM_PARITY_DIR", SHARED / "xsam_parity"))


def _load_cases() -> list[dict[str, Any]]:
    if not PROMPT_CASES.is_file():
        return []
    cases: list[dict[str, Any]] = json.loads(PROMPT_CASES.read_text())["cases"]
    return cases


def _parity_cases() -> list[Path]:
    return sorted((PARITY_DIR / "cases").glob("*/case.json"))


@pytest.fixture(scope="module")
def phi3_tokenizer() -> Any:
    path = PROMPT_CASES.parent / "phi3_tokenizer"
    if not path.is_dir():
        pytest.skip(f"no tokenizer at {path}")
    return transformers.AutoTokenizer.from_pretrained(str(path), use_fast=True)


@pytest.fixture(scope="module")
def tiny_tokenizer() -> Any:
    path = PARITY_DIR / "tokenizer"
    if not path.is_dir():
        pytest.skip(f"no tokenizer at {path}")
    return transformers.AutoTokenizer.from_pretrained(str(path), use_fast=True)


def _templates(variant: dict[str, Any]) -> tuple[str | None, str | None]:
    """The (question, answer) templates the official code was forced to pick."""
    question = answer = None
    for choice in variant["forced_choices"]:
        if "QUESTION" in choice["list"]:
            question = question or choice["value"]
        elif "ANSWER" in choice["list"]:
            answer = answer or choice["value"]
    return question, answer


def _turns_for(case: dict[str, Any], variant_name: str) -> list[Turn]:
    variant = case["variants"][variant_name]
    example = variant.get("demo_example", case["example"]) if variant_name == "demo" else case["example"]
    question, answer = _templates(variant)
    task: XSamTask = case["task"]
    with_answer = variant["settings"]["output_ids_with_output"]
    return task_turns(
        task,
        categories=example.get("sampled_cats") or (),
        expressions=example.get("sampled_sents") or (),
        num_regions=len(example.get("sampled_labels") or ()),
        is_sentence=bool(example.get("is_sentence", False)),
        question_template=question,
        answer_template=answer if with_answer else None,
    )


def _variant_params() -> list[Any]:
    params = []
    for case in _load_cases():
        for variant in ("eval", "eval_nobos", "demo"):
            if variant in case["variants"]:
                params.append(pytest.param(case, variant, id=f"{case['name']}-{variant}"))
    return params


@pytest.mark.parametrize(("case", "variant_name"), _variant_params())
def test_prompt_case_matches_official_ids(
    case: dict[str, Any], variant_name: str, phi3_tokenizer: Any
) -> None:
    variant = case["variants"][variant_name]
    settings = variant["settings"]
    encoder = PromptEncoder(
        phi3_tokenizer, add_bos=settings["next_needs_bos_token"], max_length=settings["max_length"]
    )
    turns = _turns_for(case, variant_name)
    # The exact strings fed to the official encoder come out of our templates too.
    assert [t.question for t in turns][0] in variant["conversation"][0]["input"]
    encoded = encoder.encode(turns)

    assert encoded.input_ids.tolist() == variant["input_ids"]
    assert encoded.labels.tolist() == variant["labels"]
    expected_cond = variant["cond_ids"] if variant["cond_ids"] is not None else [-1] * variant["length"]
    assert encoded.cond_ids.tolist() == expected_cond
    assert encoded.seg_ids.tolist() == variant["seg_ids"]
    assert encoded.num_phrases == variant["num_phrases"]
    assert encoded.num_seg_tokens == variant["num_seg_tokens"]


@pytest.mark.parametrize("case_json", _parity_cases(), ids=lambda p: p.parent.name)
def test_parity_bundle_prompt_ids(case_json: Path, tiny_tokenizer: Any) -> None:
    case = json.loads(case_json.read_text())
    question, answer = dict(case["template_choices_made"]).get("question"), case.get("answer")
    task: XSamTask = case["task"]
    predict = case["mode"] == "predict"
    example = case["example"]
    turns = task_turns(
        task,
        categories=case.get("categories") or (),
        expressions=example.get("sampled_sents") or (),
        num_regions=len(case.get("visual_prompts") or ()),
        is_sentence=bool(example.get("is_sentence", False)),
        question_template=question,
        answer_template=None if predict else answer,
    )
    encoder = PromptEncoder(tiny_tokenizer, add_bos=case["bos"])
    encoded = encoder.encode(turns)
    assert encoded.input_ids.tolist() == case["input_ids"]
    assert encoded.cond_ids.tolist() == (case["cond_ids"] or [-1] * len(case["input_ids"]))
    assert encoded.seg_ids.tolist() == case["seg_ids"]


def test_default_templates_are_first_question_and_documented_answer(phi3_tokenizer: Any) -> None:
    turns = task_turns("genseg", categories=("person", "sky-other-merged"))
    assert turns == [Turn(genseg_question(("person", "sky-other-merged")), DEFAULT_ANSWER)]
    assert turns[0].question.startswith("Can you segment the image based on the following categories:")
    assert "<p>sky</p>" in turns[0].question
    assert GENSEG_ANSWERS[3] == DEFAULT_ANSWER
    encoded = PromptEncoder(phi3_tokenizer).encode(turns)
    assert encoded.input_ids[0] == phi3_tokenizer.bos_token_id
    assert encoded.image_position == 2 and encoded.input_ids[2] == IMAGE_TOKEN_INDEX
    assert encoded.num_phrases == 2 and encoded.num_seg_tokens == 1


def test_prefix_through_image_is_shared_by_all_prompts(phi3_tokenizer: Any) -> None:
    encoder = PromptEncoder(phi3_tokenizer)
    a = encoder.encode_task("refseg", expressions=("the dog",))
    b = encoder.encode_task("vgdseg", num_regions=2)
    pos = a.image_position
    assert pos is not None and pos == b.image_position
    assert a.input_ids[: pos + 1].tolist() == b.input_ids[: pos + 1].tolist()


def test_gcg_prompt_is_prompt_only(phi3_tokenizer: Any) -> None:
    encoded = PromptEncoder(phi3_tokenizer).encode_task("gcgseg")
    assert encoded.num_seg_tokens == 0
    assert (encoded.labels == -100).all()
    assert phi3_tokenizer.convert_ids_to_tokens(int(encoded.input_ids[-1])) == "<|assistant|>"


def test_bad_prompts_raise_prompt_errors() -> None:
    with pytest.raises(PromptError):
        task_turns("genseg")
    with pytest.raises(PromptError):
        task_turns("refseg", expressions=("  ",))
    with pytest.raises(PromptError):
        task_turns("intseg", num_regions=2)
    with pytest.raises(PromptError):
        genseg_question(["cat"], template="no field here")


def test_clean_category_name() -> None:
    assert clean_category_name("sky-other-merged") == "sky"
    assert clean_category_name("door-stuff") == "door"
    assert clean_category_name("Street-Lamp") == "street lamp"


def test_gcg_phrases_and_caption_match_parity_case(tiny_tokenizer: Any) -> None:
    expected_path = PARITY_DIR / "cases" / "gcgseg_predict" / "expected.json"
    if not expected_path.is_file():
        pytest.skip("parity bundle without the gcgseg_predict case")
    expected = json.loads(expected_path.read_text())
    llm = expected["llm"]
    p_start, p_end = tiny_tokenizer.convert_tokens_to_ids(["<p>", "</p>"])
    ids = np.asarray(llm["generated_ids"])
    assert gcg_phrases(ids, tiny_tokenizer, p_start, p_end) == llm["gcg_phrases"]
    assert gcg_caption(llm["generated_text"]) == llm["gcg_caption"]
