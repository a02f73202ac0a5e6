"""Suites: regression JSONL validated at load with file:line errors, target suites from the
store's held-out tasks per family, and a retention suite frozen once from the base model."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from lifelong.evals.suites import (
    EvalItem,
    SuiteError,
    family,
    feedback_suite,
    freeze_retention_suite,
    load_regression_suites,
    load_suite_file,
    target_suites,
)
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.records import Correction, NewInteraction, NewTask, Outcome, Rating
from lifelong.feedback_store.tasks import add_task


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


ADD = {"prompt": "What is 12 + 34?", "reference": "46", "verifier": "numeric"}
CHAT = {"messages": [{"role": "user", "content": "Say hi"}], "reference": "hi",
        "verifier": "contains", "options": {"case_sensitive": False}, "tags": ["greeting"]}


def test_each_jsonl_file_is_a_regression_suite(tmp_path):
    write_jsonl(tmp_path / "arithmetic.jsonl", [ADD, "", {**ADD, "prompt": "12+34="}])
    write_jsonl(tmp_path / "chat.jsonl", [CHAT])
    (tmp_path / "notes.txt").write_text("not a suite")
    suites = load_regression_suites(tmp_path)
    assert [(s.name, s.kind, len(s.items)) for s in suites] == [
        ("arithmetic", "regression", 2), ("chat", "regression", 1)]
    item = suites[1].items[0]
    assert item.messages == CHAT["messages"] and item.prompt is None
    assert item.options == {"case_sensitive": False} and item.tags == ("greeting",)


def test_item_ids_are_stable_across_reloads_and_other_lines(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [ADD, CHAT])
    first = load_suite_file(path).items
    write_jsonl(path, [{**ADD, "prompt": "new line first"}, CHAT, ADD])
    again = {item.prompt or "chat": item.id for item in load_suite_file(path).items}
    assert again["What is 12 + 34?"] == first[0].id and again["chat"] == first[1].id


def test_given_ids_are_kept_and_duplicates_refused(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{**ADD, "id": "q1"}, {**CHAT, "id": "q1"}])
    with pytest.raises(SuiteError, match=r"a.jsonl:2: duplicate item \(id 'q1', first on line 1\)"):
        load_suite_file(path)


def test_every_bad_line_is_reported_with_file_and_line(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [
        ADD,
        "{not json",
        {**ADD, "verifier": "exact_mach"},
        {**ADD, "verifier": "regex", "reference": "(", "options": {}},
        {"reference": "46", "verifier": "numeric"},
        {**ADD, "reference": 46},
        {**ADD, "colour": "blue"},
        {**ADD, "options": {"abs_tol": "a lot"}},
        [1, 2],
        {**CHAT, "messages": [{"role": "robot", "content": "x"}], "options": {}},
    ])
    write_jsonl(tmp_path / "also_bad.jsonl", ["{"])
    with pytest.raises(SuiteError) as caught:
        load_regression_suites(tmp_path)
    problems = caught.value.problems
    bad = str(tmp_path / "bad.jsonl")
    expected = [
        f"{bad}:2: not JSON",
        f"{bad}:3: unknown verifier 'exact_mach'; known verifiers: agreement, contains, exact_match",
        f"{bad}:4: verifier 'regex': reference pattern does not compile",
        f"{bad}:5: give exactly one of 'prompt' and 'messages'",
        f"{bad}:6: 'reference' must be a string (quote numbers: \"46\")",
        f"{bad}:7: unknown key(s) colour",
        f"{bad}:8: verifier 'numeric': option 'abs_tol' must be a finite number >= 0",
        f"{bad}:9: expected a JSON object, got list",
        f"{bad}:10: 'messages' must be a non-empty list",
        f"{tmp_path / 'also_bad.jsonl'}:1: not JSON",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == len(expected)  # line 1 is valid: nothing said about it


def test_missing_folder_and_empty_file_are_errors(tmp_path):
    with pytest.raises(SuiteError, match="does not exist"):
        load_regression_suites(tmp_path / "nowhere")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SuiteError, match="empty.jsonl: no items"):
        load_regression_suites(tmp_path)


def test_family_is_the_first_family_tag():
    assert family(["x", "family:sub2", "family:add2"]) == "sub2"
    assert family(["x"]) == "untagged"


def test_target_suites_are_the_heldout_tasks_per_family(session):
    def task(prompt, tags, heldout):
        return add_task(session, task=NewTask(prompt=prompt, reference="1", verifier="numeric",
                                              tags=tags), principal=None,
                        heldout_fraction=1.0 if heldout else 0.0)

    sub = [task(f"What is {i} - 1?", ("family:sub2",), True) for i in range(3)]
    add = task("What is 1 + 0?", ("family:add2", "easy"), True)
    task("What is 9 - 1?", ("family:sub2",), False)  # training split: never in an eval
    loose = task("What is 2 - 1?", (), True)
    session.commit()
    suites = {s.name: s for s in target_suites(session)}
    assert sorted(suites) == ["target:add2", "target:sub2", "target:untagged"]
    assert {s.kind for s in suites.values()} == {"target"}
    assert [i.id for i in suites["target:sub2"].items] == [t.id for t in sub]
    (item,) = suites["target:add2"].items
    assert (item.id, item.prompt, item.reference, item.tags) == (
        add.id, "What is 1 + 0?", "1", ("family:add2", "easy"))
    assert suites["target:untagged"].items[0].id == loose.id


def items(n):
    return [EvalItem(id=f"i{k}", prompt=f"What is {k} + 1?", reference=str(k + 1), verifier="numeric")
            for k in range(n)]


def test_retention_suite_keeps_what_the_base_model_passed_and_is_frozen(tmp_path):
    path = tmp_path / "retention" / "retention.jsonl"
    first = freeze_retention_suite(path, items=items(4),
                                   base_passed={"i0": True, "i1": False, "i2": True, "i3": False})
    assert first.kind == "retention" and [i.id for i in first.items] == ["i0", "i2"]
    # Later calls read the frozen file: a different model's results change nothing.
    again = freeze_retention_suite(path, items=items(4), base_passed={f"i{k}": True for k in range(4)})
    assert again == first
    assert not path.with_suffix(".jsonl.partial").exists()


def test_retention_suite_refuses_missing_results_and_an_empty_freeze(tmp_path):
    with pytest.raises(ValueError, match="no base-model result for 1 item"):
        freeze_retention_suite(tmp_path / "r.jsonl", items=items(2), base_passed={"i0": True})
    with pytest.raises(ValueError, match="passed none"):
        freeze_retention_suite(tmp_path / "r.jsonl", items=items(2),
                               base_passed={"i0": False, "i1": False})
    assert not (tmp_path / "r.jsonl").exists()


def _logged(session, question: str, answer: str, *, heldout: bool) -> str:
    record = NewInteraction(
        id=f"chatcmpl-{uuid.uuid4().hex}", created_at=datetime.now(UTC), endpoint="chat.completions",
        request={"messages": [{"role": "user", "content": question}]}, model="lifelong",
        response_text=answer,
    )
    add_interactions(session, records=[record], heldout_fraction=float(heldout))
    return record.id


def test_feedback_suite_is_the_heldout_feedback_with_a_known_right_answer(session):
    corrected = _logged(session, "Repeat 1234.", "12", heldout=True)
    passed = _logged(session, "Repeat 5678.", "5678", heldout=True)
    failed = _logged(session, "Repeat 9012.", "90", heldout=True)
    liked = _logged(session, "Repeat 3456.", "3456", heldout=True)
    trained_on = _logged(session, "Repeat 7890.", "78", heldout=False)
    add_feedback(session, items=[
        Correction(corrected, text="1234"), Outcome(passed, passed=True),
        Outcome(failed, passed=False), Rating(liked, score=1.0), Correction(trained_on, text="7890"),
    ], principal=None, admin=True)
    session.commit()
    suite = feedback_suite(session)
    assert (suite.name, suite.kind) == ("target:feedback", "target")
    assert sorted((item.messages[0]["content"], item.reference, item.verifier) for item in suite.items) == [
        ("Repeat 1234.", "1234", "exact_match"), ("Repeat 5678.", "5678", "exact_match")]


def test_no_heldout_feedback_is_no_feedback_suite(session):
    assert feedback_suite(session) is None
