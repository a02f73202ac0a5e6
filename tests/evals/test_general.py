"""The general-capability suite's prompts and items, and the `agreement` verifier that scores them."""

from __future__ import annotations

import pytest

from lifelong.evals import general
from lifelong.evals.general import GeneralPromptsChanged, general_items, general_prompts
from lifelong.evals.suites import load_suite_file
from lifelong.evals.verifiers import verify


def test_the_shipped_prompts_split_into_two_fixed_disjoint_halves():
    judged, trained = general_prompts("eval"), general_prompts("anchor")
    assert len(judged) >= 120 and len(trained) >= 120
    assert not set(judged) & set(trained)  # the guard never grades what training replays
    assert general_prompts("eval") == judged  # the same halves every time
    assert "What is the capital of France?" in judged + trained


def test_an_edited_prompt_file_is_refused(tmp_path, monkeypatch):
    edited = tmp_path / "general_prompts.txt"
    edited.write_text(general.PROMPTS_FILE.read_text() + "One more prompt?\n")
    monkeypatch.setattr(general, "PROMPTS_FILE", edited)
    with pytest.raises(GeneralPromptsChanged, match="reinstall"):
        general_prompts("eval")


def test_items_are_the_base_answers_judged_by_agreement_and_survive_a_reload(tmp_path):
    items = general_items({"What is the capital of France?": "The capital is Paris.",
                           "Say nothing.": "  "}, min_ratio=0.5)
    (item,) = items  # an empty base answer has nothing to keep
    assert (item.verifier, item.reference, dict(item.options)) == (
        "agreement", "The capital is Paris.", {"min_ratio": 0.5})
    path = tmp_path / "general.jsonl"
    path.write_text("".join(__import__("json").dumps(i.to_json()) + "\n" for i in items))
    assert load_suite_file(path, kind="retention").items == tuple(items)


@pytest.mark.parametrize(("answer", "passed"), [
    ("The capital is Paris.", True),
    ("The  capital is\nParis.", True),  # whitespace is layout
    ("Paris is the capital.", False),
    ("14766666", False),
])
def test_agreement_scores_similarity_to_the_reference(answer, passed):
    result = verify("agreement", answer, "The capital is Paris.", {})
    assert result.passed is passed
    assert 0.0 <= result.score <= 1.0
    if answer.split() == ["The", "capital", "is", "Paris."]:
        assert result.score == 1.0
    if answer == "14766666":
        assert result.score < 0.1
