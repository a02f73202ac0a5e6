"""Verifiers judge answers by name; bad names and options are refused before any eval; other
packages add verifiers through the `lifelong.verifiers` entry point group."""

from __future__ import annotations

import json
import textwrap

import pytest

from lifelong.evals.verifiers import (
    MAX_PATTERN_CHARS,
    InvalidVerifierOptions,
    PatternTooLong,
    UnknownVerifier,
    VerifierResult,
    check_pattern_lengths,
    check_verifier,
    final_number,
    get_verifier,
    verifier_names,
    verify,
)


def test_result_score_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        VerifierResult(score=1.5, passed=True, reason="")


@pytest.mark.parametrize(("answer", "reference", "options", "passed"), [
    ("46", "46", {}, True),
    ("  46\n", "46", {}, True),
    ("hello   world", "hello world", {}, True),
    ("hello   world", "hello world", {"collapse_whitespace": False}, False),
    (" 46", "46", {"strip": False, "collapse_whitespace": False}, False),
    ("Paris", "paris", {}, False),
    ("Paris", "paris", {"case_sensitive": False}, True),
    ("47", "46", {}, False),
])
def test_exact_match_normalises_as_told(answer, reference, options, passed):
    assert verify("exact_match", answer, reference, options).passed is passed


def test_exact_match_reason_shows_both_sides():
    result = verify("exact_match", "47", "46", {})
    assert result.score == 0.0 and result.reason == "expected '46', got '47'"


@pytest.mark.parametrize(("text", "number"), [
    ("46", 46.0), ("The answer is 12, no wait, 46.", 46.0), ("-3.5", -3.5),
    ("1,234,567 apples", 1234567.0), ("about 6.02e23", 6.02e23), ("x = .5", 0.5),
    ("no digits", None), ("58 - 21 = 37", 37.0),
])
def test_final_number_is_the_last_one_written(text, number):
    assert final_number(text) == number


@pytest.mark.parametrize(("answer", "reference", "options", "passed"), [
    ("So the total is 46", "46", {}, True),
    ("46.0", "46", {}, True),
    ("46.4", "46", {}, False),
    ("46.4", "46", {"abs_tol": 0.5}, True),
    ("101", "100", {"rel_tol": 0.02}, True),
    ("103", "100", {"rel_tol": 0.02}, False),
    ("forty-six", "46", {}, False),
])
def test_numeric_compares_the_final_number_within_tolerance(answer, reference, options, passed):
    assert verify("numeric", answer, reference, options).passed is passed


def test_numeric_without_a_number_says_so():
    assert verify("numeric", "forty-six", "46", {}).reason == "no number in the answer 'forty-six'"


@pytest.mark.parametrize(("answer", "reference", "options", "passed"), [
    ("2024-01-31", r"\d{4}-\d{2}-\d{2}", {}, True),
    ("on 2024-01-31", r"\d{4}-\d{2}-\d{2}", {}, False),
    ("on 2024-01-31", r"\d{4}-\d{2}-\d{2}", {"search": True}, True),
    ("YES", "", {"pattern": "yes", "ignore_case": True}, True),
])
def test_regex_matches_the_whole_answer_unless_told_to_search(answer, reference, options, passed):
    assert verify("regex", answer, reference, options).passed is passed


@pytest.mark.parametrize(("answer", "options", "passed"), [
    ("the capital is Paris.", {}, True), ("the capital is paris.", {}, False),
    ("the capital is paris.", {"case_sensitive": False}, True),
])
def test_contains_finds_the_reference(answer, options, passed):
    assert verify("contains", answer, "Paris", options).passed is passed


SCHEMA = {"type": "object", "required": ["name", "age"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}


@pytest.mark.parametrize(("answer", "reference", "options", "passed", "reason"), [
    ('{"a": 1}', "", {}, True, "valid JSON"),
    ("```json\n{\"a\": 1}\n```", "", {}, True, "valid JSON"),
    ("{a: 1}", "", {}, False, "not JSON: Expecting property name enclosed in double quotes"),
    ('{"name": "Ada", "age": 36}', "", {"schema": SCHEMA}, True, "valid JSON under the schema"),
    ('{"name": "Ada", "age": -1}', "", {"schema": SCHEMA}, False, "schema violation at age"),
    ('{"name": "Ada"}', "", {"schema": SCHEMA}, False, '"age" is a required property'),
    ('{"b": 2, "a": 1}', '{"a": 1, "b": 2}', {}, True, "valid JSON"),
    ('{"a": 2}', '{"a": 1}', {}, False, "not equal to the reference"),
])
def test_json_parses_validates_and_compares(answer, reference, options, passed, reason):
    result = verify("json", answer, reference, options)
    assert result.passed is passed and reason in result.reason


def test_python_tests_runs_fenced_code_against_the_reference_tests():
    answer = "Here you go:\n```python\ndef square(x):\n    return x * x\n```\n"
    assert verify("python_tests", answer, "assert square(3) == 9\n", {}).passed
    wrong = verify("python_tests", "def square(x):\n    return x + x\n",
                   "assert square(3) == 9, 'square(3)'\n", {})
    assert not wrong.passed and "AssertionError: square(3)" in wrong.reason


def test_python_tests_timeout_option_bounds_the_run():
    result = verify("python_tests", "while True:\n    pass\n", "assert True\n", {"timeout_s": 1})
    assert not result.passed and result.reason == "timed out after 1 s"


def test_unknown_verifier_names_the_known_ones():
    with pytest.raises(UnknownVerifier) as caught:
        get_verifier("exact_mach")
    message = str(caught.value)
    assert "unknown verifier 'exact_mach'" in message
    assert all(name in message for name in ("exact_match", "numeric", "python_tests"))


@pytest.mark.parametrize(("name", "options", "message"), [
    ("regex", {"pattern": "(unclosed"}, "option 'pattern' does not compile"),
    ("numeric", {"abs_tol": "0.1"}, "option 'abs_tol' must be a finite number >= 0"),
    ("numeric", {"rel_tol": -1}, "option 'rel_tol' must be a finite number >= 0"),
    ("exact_match", {"case_sensitve": False}, "unknown option 'case_sensitve' (known: "),
    ("exact_match", {"strip": "yes"}, "option 'strip' must be true or false"),
    ("json", {"schema": {"type": "objekt"}}, "option 'schema' is not a valid JSON Schema"),
    ("python_tests", {"timeout_s": 3600}, "option 'timeout_s' must be a number of seconds"),
])
def test_bad_options_are_refused_up_front(name, options, message):
    with pytest.raises(InvalidVerifierOptions) as caught:
        check_verifier(name, options)
    assert message in str(caught.value) and f"verifier {name!r}" in str(caught.value)


def test_every_bad_option_is_named_at_once():
    with pytest.raises(InvalidVerifierOptions) as caught:
        check_verifier("numeric", {"abs_tol": "x", "rel_tol": None})
    assert "abs_tol" in str(caught.value) and "rel_tol" in str(caught.value)


@pytest.mark.parametrize(("name", "reference", "message"), [
    ("numeric", "forty-six", "holds no number"),
    ("regex", "[a-", "reference pattern does not compile"),
    ("json", "{nope", "reference is not JSON"),
])
def test_unusable_references_are_refused_up_front(name, reference, message):
    with pytest.raises(InvalidVerifierOptions, match=message):
        check_verifier(name, {}, reference=reference)


def test_good_options_pass_the_check():
    check_verifier("json", {"schema": SCHEMA}, reference="")
    check_verifier("numeric", {"abs_tol": 0.5}, reference="46")
    check_verifier("regex", {"pattern": r"\d+", "search": True})


# Python's backtracking `re` needed 0.95 s for this pattern on 36 characters, 1.3x more per
# character: on 10,000 it would not end in the lifetime of the machine. These tests end (the
# suite's pytest-timeout stops them otherwise) because the engines are linear-time; no clock is read.
CATASTROPHIC = r"(?:.|..)*X"
LONG_ANSWER = "a" * 10_000


@pytest.mark.timeout(60)  # a regression then fails in a minute, not at the suite's 900 s
def test_a_backtracking_pattern_is_judged_in_linear_time_by_the_regex_verifier():
    for options in ({}, {"search": True}, {"ignore_case": True}):
        result = verify("regex", LONG_ANSWER, CATASTROPHIC, options)
        assert not result.passed and "does not match" in result.reason
    assert verify("regex", LONG_ANSWER + "X", CATASTROPHIC, {}).passed


@pytest.mark.parametrize(("schema", "passed"), [
    ({"type": "string", "pattern": f"^{CATASTROPHIC}$"}, False),
    ({"type": "object", "patternProperties": {f"^{CATASTROPHIC}$": {"type": "integer"}}}, True),
    ({"type": "object", "patternProperties": {f"^{CATASTROPHIC}$": True},
      "additionalProperties": False}, False),
])
@pytest.mark.timeout(60)
def test_json_schema_patterns_are_judged_in_linear_time(schema, passed):
    check_verifier("json", {"schema": schema})
    value = LONG_ANSWER if schema["type"] == "string" else {LONG_ANSWER: "x"}
    result = verify("json", json.dumps(value), "", {"schema": schema})
    assert result.passed is passed
    assert len(result.reason) < 300  # the offending 10,000 characters are not all quoted back


@pytest.mark.parametrize(("options", "message"), [
    ({"pattern": r"(?=\d)\d+"}, "option 'pattern' does not compile"),  # lookahead: backtracking only
    ({"pattern": r"(a)\1"}, "option 'pattern' does not compile"),  # a backreference
    ({"pattern": r"(?:\w{999}|\d{999})" * 3}, "RE2 instructions"),  # slow per answer character
    ({"schema": {"pattern": r"(?<=x)y"}}, "option 'schema' is not a valid JSON Schema"),
    ({"schema": {"$ref": "file:///etc/hostname"}}, "Retrieval is disabled"),  # nothing is fetched
    ({"schema": {"$ref": "http://127.0.0.1:9/schema.json"}}, "Retrieval is disabled"),
])
def test_patterns_that_only_a_backtracking_engine_runs_and_remote_refs_are_refused(options, message):
    name = "json" if "schema" in options else "regex"
    with pytest.raises(InvalidVerifierOptions, match=message.replace("(", r"\(").replace("?", r"\?")):
        check_verifier(name, options)


def test_a_schema_that_needs_fetching_fails_the_answer_rather_than_fetching():
    result = verify("json", "{}", "", {"schema": {"$ref": "file:///etc/hostname"}})
    assert not result.passed and "not usable" in result.reason


@pytest.mark.parametrize(("name", "options"), [
    ("regex", {"pattern": "a" * (MAX_PATTERN_CHARS + 1)}),
    ("json", {"schema": {"patternProperties": {"a" * (MAX_PATTERN_CHARS + 1): {}}}}),
])
def test_no_pattern_past_the_ceiling_is_even_compiled(name, options):
    # Registration runs on the gateway's event loop: RE2 took 1.3 s to refuse a 4 MB pattern.
    with pytest.raises(InvalidVerifierOptions, match=f"more than {MAX_PATTERN_CHARS}"):
        check_verifier(name, options)


@pytest.mark.parametrize(("name", "options", "reference"), [
    ("regex", {"pattern": "a" * 101}, ""),
    ("regex", {}, "a" * 101),
    ("json", {"schema": {"properties": {"x": {"pattern": "a" * 101}}}}, ""),
    ("json", {"schema": {"patternProperties": {"a" * 101: {}}}}, ""),
])
def test_a_pattern_over_the_length_cap_is_refused_naming_the_cap(name, options, reference):
    check_pattern_lengths(name, options, reference, max_chars=101)
    with pytest.raises(PatternTooLong, match="101 characters is longer than the 100 allowed"):
        check_pattern_lengths(name, options, reference, max_chars=100)


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A real distribution on sys.path: a module plus a dist-info declaring the entry point."""
    (tmp_path / "acme_verifiers.py").write_text(textwrap.dedent("""
        from lifelong.evals.verifiers import VerifierResult

        def palindrome(answer, reference, options):
            text = answer.strip().lower()
            ok = text == text[::-1] and len(text) >= options.get("min_length", 1)
            return VerifierResult(score=float(ok), passed=ok, reason="palindrome" if ok else "not one")

        def broken(answer, reference, options):
            raise RuntimeError("plugin bug")
    """))
    dist_info = tmp_path / "acme_verifiers-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-verifiers\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[lifelong.verifiers]\n"
        "palindrome = acme_verifiers:palindrome\n"
        "broken = acme_verifiers:broken\n"
        "exact_match = acme_verifiers:broken\n"  # may not shadow a built-in
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.usefixtures("installed_plugin")
def test_entry_point_verifier_is_found_by_name_and_runs():
    assert "palindrome" in verifier_names()
    check_verifier("palindrome", {"min_length": 3})
    assert verify("palindrome", "Level", "", {}).passed
    assert not verify("palindrome", "lever", "", {}).passed


@pytest.mark.usefixtures("installed_plugin")
def test_entry_point_cannot_shadow_a_built_in():
    assert verify("exact_match", "46", "46", {}).passed
    assert verifier_names().count("exact_match") == 1


@pytest.mark.usefixtures("installed_plugin")
def test_verifier_that_raises_fails_the_item_not_the_eval():
    result = verify("broken", "x", "y", {})
    assert not result.passed and result.reason == "verifier 'broken' raised RuntimeError: plugin bug"


def test_uninstalled_plugin_is_unknown():
    with pytest.raises(UnknownVerifier):
        check_verifier("palindrome", {})
