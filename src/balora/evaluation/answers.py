"""Generated answers scored by exact match (design §4, NLG row): a final number, or a final text.

``ANSWER_TYPES``: "number" (math word problems, arithmetic: the rules below, compared numerically) and
"text" (sorted word lists, spellings: :func:`extract_final_text`, compared as normalised strings).
:func:`answer_accuracy` scores either; :func:`math_accuracy` is its "number" case.

Where the answer is found, in order of trust:
1. after the last ``####`` (GSM8K's own format, and what the training data teaches);
2. inside the last LaTeX ``\\boxed{...}`` (MATH-style completions);
3. after the last "answer is" / "answer:" / "answer =" (e.g. "The answer is 42.");
4. otherwise the last number in the text.
For markers 1 and 3 the first number after the marker is taken; in a ``\\boxed{}`` the last one
("\\boxed{x = 5}" gives 5). A marker with no number after it falls through to the next rule.

Number syntax: optional minus (ASCII or U+2212), thousands separators ("1,234"; LaTeX "1{,}234"),
decimals ("3.5", ".5"), exponents ("1e5"), "$" and "%" ignored, a trailing full stop ignored.
Fractions: "a/b" between two plain numbers is kept as one number and ``normalize_number`` evaluates
it ("42/7" -> 6.0), as are ``\\frac{a}{b}`` and ``\\dfrac{a}{b}``. GSM8K answers are integers, so
this only matters for MATH-style data; the price is that a date-like "3/4" also reads as 0.75.
A number glued to letters ("x2", "H2O") is not a number; "10-12" reads as 10 and 12, not -12.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from balora.errors import DataError

_NUMBER = re.compile(
    r"""
    (?<![\w.])                        # not glued to a word, a decimal point or another number
    (?P<sign>[-\u2212])?
    (?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+|(?=\.\d))   # "1,234", "1234", or nothing before ".5"
    (?P<frac>\.\d+)?
    (?P<exp>[eE][-+]?\d+)?
    (?:/(?P<den>\d+(?:\.\d+)?)(?!\d|\.\d))?   # a fraction a/b
    """,
    re.VERBOSE,
)

ANSWER_TYPES = ("number", "text")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}")
_ANSWER_PHRASE = re.compile(r"answer\s*(?:is\b|:|=)", re.IGNORECASE)


def _clean(text: str) -> str:
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    return text.replace("{,}", ",").replace("\\!", "").replace("\\$", "$").replace("\\%", "%")


def _numbers(text: str) -> list[str]:
    """All numbers in ``text``, normalised: no thousands separators, ASCII minus."""
    out = []
    for m in _NUMBER.finditer(text):
        if not m.group("int") and not m.group("frac"):
            continue
        s = ("-" if m.group("sign") else "") + (m.group("int") or "0").replace(",", "")
        s += (m.group("frac") or "") + (m.group("exp") or "")
        if m.group("den"):
            s += "/" + m.group("den")
        out.append(s)
    return out


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def extract_final_number(text: str | None) -> str | None:
    """The final numeric answer of a completion as a normalised string (e.g. "-1234.5", "42/7"),
    or None if it has no number. The rules are in this module's docstring."""
    if not text:
        return None
    text = _clean(text)
    hashes = text.rfind("####")
    if hashes >= 0 and (nums := _numbers(text[hashes + 4 :])):
        return nums[0]
    boxed = _last_boxed(text)
    if boxed is not None and (nums := _numbers(boxed)):
        return nums[-1]
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases and (nums := _numbers(text[phrases[-1].end() :])):
        return nums[0]
    nums = _numbers(text)
    return nums[-1] if nums else None


def normalize_number(s: str | float | int | None) -> float | None:
    """A number string ("1,234.50", "$5", "-3", "42/7", "50%", "7.") as a float; None if it is not one."""
    if s is None:
        return None
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        return float(s) if math.isfinite(s) else None
    t = str(s).strip().replace("\u2212", "-").replace(",", "").replace("$", "").replace(" ", "")
    t = t.rstrip(".").rstrip("%")
    try:
        if "/" in t:
            num, den = t.split("/")
            value = float(num) / float(den)
        else:
            value = float(t)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def answers_match(prediction: float | None, reference: float, rel_tol: float = 1e-6) -> bool:
    """Numeric equality with a relative tolerance (and 1e-9 absolute, for a reference of 0)."""
    return prediction is not None and math.isclose(prediction, reference, rel_tol=rel_tol, abs_tol=1e-9)


def _reference_value(ref: str | float | int) -> float:
    if isinstance(ref, str):
        value = normalize_number(ref)
        if value is None:
            value = normalize_number(extract_final_number(ref))
    else:
        value = normalize_number(ref)
    if value is None:
        raise DataError(f"reference answer {str(ref)[-80:]!r} has no number; expected '#### n' or a number")
    return value


def _check_lengths(completions: Sequence[str], references: Sequence[Any]) -> None:
    if len(completions) == 0:
        raise DataError("cannot score an empty list of completions")
    if len(completions) != len(references):
        raise DataError(f"{len(completions)} completions but {len(references)} references")


def math_accuracy(
    completions: Sequence[str], references: Sequence[str | float | int], rel_tol: float = 1e-6
) -> dict[str, float]:
    """Fraction of completions whose final number equals the reference's.

    ``references``: GSM8K answers ("... #### 18"), plain number strings or numbers.
    Returns ``accuracy``, ``correct`` (count), ``answered`` (fraction of completions in which a
    number was found at all) and ``n``; all plain floats/ints for ``metrics.json``.
    """
    _check_lengths(completions, references)
    correct = answered = 0
    for completion, ref in zip(completions, references, strict=True):
        target = _reference_value(ref)
        pred = normalize_number(extract_final_number(completion))
        answered += pred is not None
        correct += answers_match(pred, target, rel_tol)
    n = len(completions)
    return {"accuracy": correct / n, "correct": float(correct), "answered": answered / n, "n": float(n)}


_QUOTES = ('"', "'", "`", "**")


def normalize_text(s: str | None) -> str | None:
    """A text answer in canonical form: runs of whitespace as one space, ", " between list items, outer
    quotes, backticks and bold markers (when not also inside) and a final full stop removed; case kept (it
    can matter, e.g. in ASCII order). None for None or an empty answer."""
    if s is None:
        return None
    t = re.sub(r"\s*,\s*", ", ", " ".join(str(s).split()))
    while True:
        stripped = t.rstrip(".").strip()
        for q in _QUOTES:
            inner = stripped[len(q) : -len(q)]
            if len(stripped) > 2 * len(q) and stripped.startswith(q) and stripped.endswith(q) and q not in inner:
                stripped = inner.strip()
        if stripped == t:
            break
        t = stripped
    return t or None


def extract_final_text(text: str | None) -> str | None:
    """The final text answer of a completion, normalised (:func:`normalize_text`): what follows the last
    ``####``, else the last "answer is" / "answer:" / "answer =", else the last non-empty line."""
    if not text:
        return None
    hashes = text.rfind("####")
    if hashes >= 0 and text[hashes + 4 :].strip():
        return normalize_text(text[hashes + 4 :].strip().splitlines()[0])
    phrases = list(_ANSWER_PHRASE.finditer(text))
    after = text[phrases[-1].end() :].lstrip(" \t:=") if phrases else ""
    if after.strip():
        return normalize_text(after.strip().splitlines()[0])
    lines = [line for line in text.splitlines() if line.strip()]
    return normalize_text(lines[-1]) if lines else None


def _check_type(answer_type: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise DataError(f"unknown answer type {answer_type!r}; expected one of {', '.join(ANSWER_TYPES)}")


def extract_answer(text: str | None, answer_type: str = "number") -> str | None:
    """The final answer of a completion as the scorer reads it: :func:`extract_final_number` ("number")
    or :func:`extract_final_text` ("text")."""
    _check_type(answer_type)
    return extract_final_number(text) if answer_type == "number" else extract_final_text(text)


def scored_answer(text: str | float | int | None, answer_type: str = "number") -> float | str | None:
    """The comparable final answer of a completion or reference: a float ("number") or a normalised string
    ("text"); None when there is none. Two answers match when equal (numbers: :func:`answers_match`)."""
    _check_type(answer_type)
    if answer_type == "number":
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return normalize_number(text)
        return normalize_number(extract_final_number(text))
    return None if text is None else extract_final_text(str(text))


def answer_accuracy(completions: Sequence[str], references: Sequence[str | float | int],
                    answer_type: str = "number") -> dict[str, float]:
    """:func:`math_accuracy` for ``answer_type`` "number"; for "text", the fraction of completions whose
    :func:`extract_final_text` equals the reference's (a plain answer, or a response ending ``#### answer``).
    Same keys: accuracy, correct, answered, n."""
    _check_type(answer_type)
    if answer_type == "number":
        return math_accuracy(completions, references)
    _check_lengths(completions, references)
    correct = answered = 0
    for completion, ref in zip(completions, references, strict=True):
        target = extract_final_text(str(ref))
        if target is None:
            raise DataError(f"reference answer {str(ref)[-80:]!r} is empty")
        pred = extract_final_text(completion)
        answered += pred is not None
        correct += pred == target
    n = len(completions)
    return {"accuracy": correct / n, "correct": float(correct), "answered": answered / n, "n": float(n)}
