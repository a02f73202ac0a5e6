"""Verifiers: plain functions that judge one answer against a reference.

A verifier is `(answer: str, reference: str, options: Mapping[str, Any]) -> VerifierResult`, with
a score in [0, 1], passed, and a short reason a person can read. Built in:

- exact_match: the normalised answer equals the normalised reference. Options `strip`,
  `case_sensitive`, `collapse_whitespace` (bools, all true by default).
- numeric: the answer's final number is within tolerance of the reference's. Options `abs_tol`
  (default 0) and `rel_tol` (default 1e-9), numbers >= 0.
- regex: the whole (stripped) answer matches the `pattern` option, else the reference as a
  pattern. Options `pattern`, `search` (match anywhere), `ignore_case`. RE2 syntax (no
  lookaround, no backreferences; `\\w`, `\\d` and `\\b` are ASCII: `\\pL`, `\\pN` for other scripts).
- contains: the reference occurs in the answer. Option `case_sensitive`.
- json: the answer parses as JSON (a ```json fence is allowed), is valid under the `schema`
  option (a JSON Schema) if given, and equals the reference's JSON if the reference is not empty.
  Only references inside the schema (`#/...`) resolve: nothing is fetched.
- agreement: how alike the answer is to the reference, for references that are a model's own
  earlier answer rather than the one right answer: the score is difflib's similarity ratio of
  the two normalised texts (0..1), passed at `min_ratio` (default 0.6).
- python_tests: the answer's code (a ```python fence is allowed) and the reference's test code
  (at least one `assert` or unittest TestCase), each in its own sandboxed process (`sandbox.py`):
  the tests call the answer's top-level functions with arguments and results that are Python
  literals (numbers, strings, bytes, lists, tuples, dicts, sets, None); an answer returning
  another object (an instance of its own class) fails with that reason.
  Options `timeout_s` and `memory_mb`, capped by the sandbox policy (settings `evals.sandbox`);
  refused where the sandbox's isolation level is not available.

Past 400 lines on purpose: each built-in verifier sits beside the check of its options, and
`check_verifier` beside both, so a verifier's contract is read in one place.

Custom verifiers come from other installed packages through the entry point group
`lifelong.verifiers`; the entry point's name is the verifier's name and its object a verifier
function. In the other package's pyproject.toml:

    [project.entry-points."lifelong.verifiers"]
    sql_result = "my_package.verifiers:sql_result"

Their options are checked only for being a JSON object (the function knows the rest); a built-in
name always wins over a plugin of the same name. Names are checked when a task or suite is
registered (`check_verifier`), so an unknown verifier never reaches an eval.

Patterns come from API callers and run against model output, so they go to linear-time engines:
RE2 for the regex verifier, the Rust `regex` crate (jsonschema-rs) for JSON Schema `pattern` and
`patternProperties`. Python's backtracking `re` took 0.95 s on `(?:.|..)*X` and a 36-character
answer, 1.3x more per character (measured); RE2 answers that in microseconds at any length. A
compiled RE2 program is capped at MAX_PROGRAM_SIZE instructions, which bounds the work per answer
character; `check_pattern_lengths` caps the pattern text (the daemon's setting).
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import jsonschema_rs
import re2

from lifelong.evals import sandbox

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lifelong.verifiers"


@dataclass(frozen=True, slots=True)
class VerifierResult:
    score: float  # in [0, 1]
    passed: bool
    reason: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"a verifier score lies in [0, 1], got {self.score}")


Verifier = Callable[[str, str, Mapping[str, Any]], VerifierResult]


class UnknownVerifier(LookupError):
    """No built-in verifier and no `lifelong.verifiers` entry point has this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown verifier {name!r}; known verifiers: {', '.join(known)}")
        self.name, self.known = name, known


class InvalidVerifierOptions(ValueError):
    """Options a verifier cannot work with (wrong type, unknown key, a pattern that won't compile)."""

    def __init__(self, verifier: str, message: str) -> None:
        super().__init__(f"verifier {verifier!r}: {message}")
        self.verifier = verifier


def _result(passed: bool, reason: str) -> VerifierResult:
    return VerifierResult(score=1.0 if passed else 0.0, passed=passed, reason=reason)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(text: str, limit: int = 60) -> str:
    return repr(_clip(text, limit))


# --- the built-in verifiers ------------------------------------------------------------------

def _normalise(text: str, options: Mapping[str, Any]) -> str:
    if options.get("strip", True):
        text = text.strip()
    if options.get("collapse_whitespace", True):
        text = " ".join(text.split())
    if not options.get("case_sensitive", True):
        text = text.casefold()
    return text


def exact_match(answer: str, reference: str, options: Mapping[str, Any]) -> VerifierResult:
    got, want = _normalise(answer, options), _normalise(reference, options)
    if got == want:
        return _result(True, "exact match")
    return _result(False, f"expected {_short(want)}, got {_short(got)}")


# Signed integers and decimals, thousands separators allowed ("1,234.5"), exponents too.
_NUMBER = re.compile(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def final_number(text: str) -> float | None:
    """The last number written in `text` (what a worked answer ends with), or None."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def numeric(answer: str, reference: str, options: Mapping[str, Any]) -> VerifierResult:
    want = final_number(reference)
    if want is None:
        return _result(False, f"reference {_short(reference)} holds no number")
    got = final_number(answer)
    if got is None:
        return _result(False, f"no number in the answer {_short(answer)}")
    abs_tol, rel_tol = float(options.get("abs_tol", 0.0)), float(options.get("rel_tol", 1e-9))
    if math.isclose(got, want, abs_tol=abs_tol, rel_tol=rel_tol):
        return _result(True, f"{got:g} is within tolerance of {want:g}")
    return _result(False, f"{got:g} differs from {want:g} (abs_tol {abs_tol:g}, rel_tol {rel_tol:g})")


def agreement(answer: str, reference: str, options: Mapping[str, Any]) -> VerifierResult:
    got, want = " ".join(answer.split()), " ".join(reference.split())
    ratio = difflib.SequenceMatcher(None, got, want, autojunk=False).ratio()
    passed = ratio >= float(options.get("min_ratio", 0.6))
    return VerifierResult(score=ratio, passed=passed,
                          reason=f"similarity {ratio:.2f} to {_short(want)}: got {_short(got)}")


# Matching costs about programsize x answer length: a 7,996-instruction program took 0.07 s over
# 15,000 characters, a 39,964 one 0.65 s (RE2 leaves its DFA for the slower NFA past max_mem).
MAX_PROGRAM_SIZE = 10_000
# No longer pattern is compiled at all, whatever the daemon's own (smaller) cap: registration
# checks run on the gateway's event loop, and RE2 took 1.3 s to refuse a 4 MB one.
MAX_PATTERN_CHARS = 100_000


class PatternError(ValueError):
    """A pattern RE2 refuses (syntax it lacks, such as lookaround) or one too large to run."""


@functools.lru_cache(maxsize=256)  # per process: a suite asks the same pattern of every answer
def compile_pattern(pattern: str, *, ignore_case: bool = False) -> re2._Regexp:
    """`pattern` compiled by RE2 (linear-time matching). Raises PatternError."""
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the caller's 4xx, not lines on our stderr
    options.case_sensitive = not ignore_case
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as error:
        message = error.args[0] if error.args else error
        raise PatternError(message.decode() if isinstance(message, bytes) else str(message)) from None
    if compiled.programsize > MAX_PROGRAM_SIZE:
        raise PatternError(f"compiles to {compiled.programsize} RE2 instructions, more than "
                           f"{MAX_PROGRAM_SIZE} (smaller repetition counts)")
    return compiled


def regex(answer: str, reference: str, options: Mapping[str, Any]) -> VerifierResult:
    source = options.get("pattern", reference)
    try:
        pattern = compile_pattern(source, ignore_case=bool(options.get("ignore_case", False)))
    except PatternError as error:
        return _result(False, f"pattern does not compile: {error}")
    text = answer.strip()
    found = pattern.search(text) if options.get("search", False) else pattern.fullmatch(text)
    if found:
        return _result(True, f"matches /{source}/")
    return _result(False, f"{_short(text)} does not match /{source}/")


def contains(answer: str, reference: str, options: Mapping[str, Any]) -> VerifierResult:
    if options.get("case_sensitive", True):
        found = reference in answer
    else:
        found = reference.casefold() in answer.casefold()
    return _result(found, f"{'contains' if found else 'does not contain'} {_short(reference)}")


_FENCE = re.compile(r"```(?:json|python|py)?\s*\n(.*?)```", re.DOTALL)


def _unfence(text: str) -> str:
    """The body of the first ``` fence if the answer has one (models like to wrap code)."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


# Linear-time patterns (no lookaround, no backreferences), compiled programs of at most 1 MiB.
_SCHEMA_PATTERNS = jsonschema_rs.RegexOptions(size_limit=2**20, dfa_size_limit=2**20)


def _schema_validator(schema: Any) -> Any:
    """A validator for `schema` whose patterns run in linear time and which fetches nothing
    (`offline`: a `$ref` to a URL or a file is refused, never retrieved). Raises
    jsonschema_rs.ValidationError for a schema that is not valid or not usable."""
    return jsonschema_rs.validator_for(schema, pattern_options=_SCHEMA_PATTERNS, offline=True)


def json_verifier(answer: str, reference: str, options: Mapping[str, Any]) -> VerifierResult:
    try:
        value = json.loads(_unfence(answer))
    except json.JSONDecodeError as error:
        return _result(False, f"not JSON: {error.msg} at line {error.lineno} column {error.colno}")
    if "schema" in options:
        try:
            validator = _schema_validator(options["schema"])
        except jsonschema_rs.ValidationError as error:
            return _result(False, f"the schema is not usable: {_clip(error.message, 200)}")
        for violation in validator.iter_errors(value):  # the first one is the reason
            where = "/".join(str(part) for part in violation.instance_path) or "(root)"
            # The message quotes the whole offending value: clipped, as answers may be long.
            return _result(False, f"schema violation at {where}: {_clip(violation.message, 200)}")
    if reference.strip():
        try:
            wanted = json.loads(reference)
        except json.JSONDecodeError:
            return _result(False, "the reference is not JSON")
        if value != wanted:
            return _result(False, "valid JSON, but not equal to the reference")
    return _result(True, "valid JSON" + (" under the schema" if "schema" in options else ""))


def python_tests(answer: str, reference: str, options: Mapping[str, Any]) -> VerifierResult:
    if (problem := sandbox.check_tests(reference)) is not None:
        return _result(False, problem)
    caps = sandbox.policy()  # a task registered under looser caps still runs within today's
    limits = sandbox.SandboxLimits(
        wall_s=min(float(options.get("timeout_s", 10.0)), caps.max_timeout_s),
        memory_bytes=min(int(options.get("memory_mb", 512)), caps.max_memory_mb) * 2**20,
        scratch_bytes=caps.scratch_mb * 2**20,
    )
    outcome = sandbox.run_python_tests(_unfence(answer), reference, limits=limits)
    return _result(outcome.passed, outcome.reason)


# --- options: checked at registration time -----------------------------------------------------

def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _tolerance(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return None if ok and value >= 0 else "must be a finite number >= 0"


def _pattern(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > MAX_PATTERN_CHARS:
        return f"is {len(value)} characters, more than {MAX_PATTERN_CHARS}"
    try:
        compile_pattern(value)
    except PatternError as error:
        return f"does not compile: {error} (RE2 syntax)"
    return None


def _schema(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be a JSON Schema object"
    longest = max((len(pattern) for pattern in _schema_patterns(value)), default=0)
    if longest > MAX_PATTERN_CHARS:
        return f"has a pattern of {longest} characters, more than {MAX_PATTERN_CHARS}"
    try:
        _schema_validator(value)
    except jsonschema_rs.ValidationError as error:
        return f"is not a valid JSON Schema: {error.message}"
    return None


def _timeout(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    cap = sandbox.policy().max_timeout_s
    return None if ok and 0 < value <= cap else \
        f"must be a number of seconds in (0, {cap:g}] ({sandbox.SETTING}.max_timeout_s)"


def _share(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
    return None if ok else "must be a number in [0, 1]"


def _memory(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    cap = sandbox.policy().max_memory_mb
    return None if ok and 64 <= value <= cap else \
        f"must be a whole number of MiB in [64, {cap}] ({sandbox.SETTING}.max_memory_mb)"


OptionCheck = Callable[[Any], str | None]

# name -> (verifier, {option: check}): the verifiers are many and open, so a table is justified.
BUILTIN: dict[str, tuple[Verifier, dict[str, OptionCheck]]] = {
    "exact_match": (exact_match, {"strip": _bool, "case_sensitive": _bool, "collapse_whitespace": _bool}),
    "numeric": (numeric, {"abs_tol": _tolerance, "rel_tol": _tolerance}),
    "regex": (regex, {"pattern": _pattern, "search": _bool, "ignore_case": _bool}),
    "contains": (contains, {"case_sensitive": _bool}),
    "agreement": (agreement, {"min_ratio": _share}),
    "json": (json_verifier, {"schema": _schema}),
    "python_tests": (python_tests, {"timeout_s": _timeout, "memory_mb": _memory}),
}


def _plugins() -> dict[str, Any]:
    # Read each time: packages installed after start-up count, and it is cheap next to an eval.
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def verifier_names() -> list[str]:
    """Every verifier name available: the built-ins, then the installed plugins, sorted."""
    return sorted(BUILTIN) + sorted(_plugins())


def get_verifier(name: str) -> Verifier:
    """The verifier called `name`. Raises UnknownVerifier, naming the known ones."""
    if name in BUILTIN:
        return BUILTIN[name][0]
    plugin = _plugins().get(name)
    if plugin is None:
        raise UnknownVerifier(name, verifier_names())
    loaded = plugin.load()
    if not callable(loaded):
        raise UnknownVerifier(name, verifier_names())
    return loaded  # type: ignore[no-any-return]


def usable_verifier(name: str, options: Mapping[str, Any], reference: str) -> bool:
    """Whether `name` with `options` can grade answers against `reference` (check_verifier)."""
    try:
        check_verifier(name, options, reference=reference)
    except (UnknownVerifier, InvalidVerifierOptions):
        return False
    return True


def check_verifier(name: str, options: Mapping[str, Any], *, reference: str | None = None) -> None:
    """Refuse, before any eval, a verifier name or options that cannot work.

    With `reference`, also refuses one the verifier cannot use (a numeric reference with no
    number, a regex reference that does not compile, a json reference that is not JSON, test
    code that tests nothing). python_tests is refused outright where the sandbox's isolation
    level is not available here (`sandbox.missing`).
    Raises UnknownVerifier or InvalidVerifierOptions (every bad option named in one message).
    """
    get_verifier(name)
    if not isinstance(options, Mapping):
        raise InvalidVerifierOptions(name, "options must be a JSON object")
    if name not in BUILTIN:
        return
    checks = BUILTIN[name][1]
    problems = []
    for key, value in options.items():
        if key not in checks:
            known = ", ".join(sorted(checks)) or "none"
            problems.append(f"unknown option {key!r} (known: {known})")
        elif (problem := checks[key](value)) is not None:
            problems.append(f"option {key!r} {problem}")
    if name == "python_tests" and (problem := sandbox.missing()) is not None:
        problems.append(problem)
    if name == "python_tests" and reference is not None \
            and (problem := sandbox.check_tests(reference)) is not None:
        problems.append(f"reference: {problem}")
    if reference is not None:
        if name == "numeric" and final_number(reference) is None:
            problems.append(f"reference {_short(reference)} holds no number")
        if name == "regex" and "pattern" not in options and (problem := _pattern(reference)):
            problems.append(f"reference pattern {problem}")
        if name == "json" and reference.strip():
            try:
                json.loads(reference)
            except json.JSONDecodeError as error:
                problems.append(f"reference is not JSON: {error.msg}")
    if problems:
        raise InvalidVerifierOptions(name, "; ".join(problems))


def _schema_patterns(schema: Any) -> Iterator[str]:
    """Every `pattern` and `patternProperties` key anywhere in a JSON Schema."""
    if isinstance(schema, dict):
        if isinstance(schema.get("pattern"), str):
            yield schema["pattern"]
        if isinstance(schema.get("patternProperties"), dict):
            yield from schema["patternProperties"]
        for value in schema.values():
            yield from _schema_patterns(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _schema_patterns(value)


def patterns(name: str, options: Mapping[str, Any], reference: str) -> list[str]:
    """The regular expressions the built-in verifier `name` would run with these options."""
    if not isinstance(options, Mapping):
        return []
    if name == "regex":
        pattern = options.get("pattern", reference)
        return [pattern] if isinstance(pattern, str) else []
    if name == "json":
        return list(_schema_patterns(options.get("schema")))
    return []


class PatternTooLong(InvalidVerifierOptions):
    """A pattern longer than the daemon allows (its `max_pattern_chars` setting)."""

    def __init__(self, verifier: str, length: int, limit: int) -> None:
        super().__init__(verifier, f"a pattern of {length} characters is longer than the "
                                   f"{limit} allowed (evals.verifiers.max_pattern_chars)")
        self.length, self.limit = length, limit


def check_pattern_lengths(name: str, options: Mapping[str, Any], reference: str, *,
                          max_chars: int) -> None:
    """Refuse a pattern of more than `max_chars` characters. Raises PatternTooLong."""
    longest = max((len(pattern) for pattern in patterns(name, options, reference)), default=0)
    if longest > max_chars:
        raise PatternTooLong(name, longest, max_chars)


def verify(name: str, answer: str, reference: str, options: Mapping[str, Any]) -> VerifierResult:
    """Run the verifier `name`. A verifier that raises fails the item rather than the eval.

    Raises UnknownVerifier.
    """
    verifier = get_verifier(name)
    try:
        return verifier(answer, reference, options)
    except Exception as error:  # a plugin's bug must not take the whole eval down
        logger.exception("verifier %s raised", name)
        return _result(False, f"verifier {name!r} raised {type(error).__name__}: {error}")
