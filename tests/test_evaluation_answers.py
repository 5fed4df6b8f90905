"""Final-answer extraction for math word problems (SPEC section 4)."""

from __future__ import annotations

import pytest

from balora.errors import DataError
from balora.evaluation import (
    ANSWER_TYPES,
    answer_accuracy,
    extract_answer,
    extract_final_number,
    extract_final_text,
    math_accuracy,
    normalize_number,
    normalize_text,
    scored_answer,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("#### 42", "42"),
        ("Natalia sold 48 clips in April and 24 in May.\n48 + 24 = 72\n#### 72", "72"),
        ("The answer is 42.", "42"),
        ("the answer is: $1,234.50", "1234.50"),
        ("So the total is -7 degrees.", "-7"),
        ("\u22123 degrees", "-3"),  # Unicode minus
        ("The answer is 42/7.", "42/7"),  # fractions kept whole, evaluated by normalize_number
        ("3 apples + 4 apples = 7 apples", "7"),  # no marker: the last number
        ("#### 1,000\n\nI hope this helps! Step 99", "1000"),  # the marker wins over later numbers
        ("We get \\boxed{12} in the end, 13 was wrong", "12"),
        ("The final answer is $\\boxed{\\frac{1}{2}}$.", "1/2"),
        ("\\boxed{x = 5}", "5"),
        ("The answer is 18 dollars and 7 cents", "18"),  # first number after the marker
        ("First 5, then the answer is 6. Check: 6 * 2 = 12", "6"),
        ("It costs $ 18.", "18"),  # trailing full stop, dollar sign
        ("about 50% of them", "50"),
        ("pages 10-12", "12"),  # a hyphen between numbers is not a minus
        ("x2 + 3", "3"),  # x2 is a name, not a number
        ("That is .5 of it", "0.5"),
        ("1,2,3", "3"),  # commas not followed by three digits are not thousands separators
        ("answer: 1{,}234", "1234"),  # LaTeX thousands separator
        ("He has 3.0 apples.", "3.0"),
        ("no numbers here", None),
        ("", None),
        ("#### -3", "-3"),
        ("The answer is below. Total 8 then 9", "8"),
        ("#### \n and then 5", "5"),  # a marker with nothing after it falls through
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


@pytest.mark.parametrize(
    "s, value",
    [("1,234.50", 1234.5), ("$5", 5.0), ("-3", -3.0), ("42/7", 6.0), ("50%", 50.0), ("7.", 7.0),
     ("1e3", 1000.0), ("abc", None), ("1/0", None), (None, None), (12, 12.0), ("\u22122", -2.0)],
)
def test_normalize_number(s, value):
    assert normalize_number(s) == (pytest.approx(value) if value is not None else None)


def test_math_accuracy_with_gsm_references():
    completions = [
        "She has 3 + 4 = 7 apples. The answer is 7.",
        "#### 1,200",
        "I am not sure.",
        "The answer is 0.333333333",  # 1/3 within 1e-6 relative
        "The answer is 10.",
    ]
    references = ["3 + 4 = <<3+4=7>>7\n#### 7", "#### 1200", "#### 5", "1/3", 11]
    m = math_accuracy(completions, references)
    assert m["correct"] == 3.0
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["answered"] == pytest.approx(4 / 5)
    assert m["n"] == 5.0


def test_math_accuracy_tolerance_is_relative_1e_6():
    assert math_accuracy(["#### 1000000.5"], [1000000])["accuracy"] == 1.0  # 5e-7 relative
    assert math_accuracy(["#### 1000002"], [1000000])["accuracy"] == 0.0  # 2e-6 relative
    assert math_accuracy(["#### 0"], ["#### 0"])["accuracy"] == 1.0


def test_math_accuracy_errors():
    with pytest.raises(DataError):
        math_accuracy([], [])
    with pytest.raises(DataError):
        math_accuracy(["#### 1"], ["#### 1", "#### 2"])
    with pytest.raises(DataError):
        math_accuracy(["#### 1"], ["no number in this reference"])


# ---- text answers (answer type "text": sorted word lists, spellings) ----


@pytest.mark.parametrize(
    "text, expected",
    [
        ("apple, Banana, cherry", "apple, Banana, cherry"),
        ("  apple ,Banana,   cherry.  ", "apple, Banana, cherry"),  # spacing around commas, final full stop
        ('"apple, Banana, cherry"', "apple, Banana, cherry"),  # outer quotes
        ("`apple, banana`", "apple, banana"),
        ("**apple, banana**", "apple, banana"),
        ("Sure! Here is the list:\n\napple, banana\n", "apple, banana"),  # no marker: the last non-empty line
        ("The answer is: apple, banana\nHope this helps.", "apple, banana"),  # after the answer phrase
        ("thinking...\n#### apple, banana\nmore text", "apple, banana"),  # after ####, its line only
        ("nekab", "nekab"),
        ("", None),
        ("   \n  ", None),
        (None, None),
    ],
)
def test_extract_final_text(text, expected):
    assert extract_final_text(text) == expected


def test_normalize_text_keeps_case_and_inner_punctuation():
    assert normalize_text("Hart, find") != normalize_text("hart, find")  # ASCII order depends on case
    assert normalize_text("'-91.9', '2.8'") == "'-91.9', '2.8'"  # inner quotes stay
    assert normalize_text("a\tb\n c") == "a b c"
    assert normalize_text("...") is None


def test_answer_accuracy_text():
    completions = ["undertaking, received, find, Hart",  # right
                   "undertaking,received,find,Hart.",  # right, other spacing and a full stop
                   "undertaking, received, Hart, find",  # wrong order
                   "Undertaking, received, find, Hart",  # wrong case
                   ""]  # no answer
    refs = ["undertaking, received, find, Hart"] * 5
    result = answer_accuracy(completions, refs, "text")
    assert result == {"accuracy": 0.4, "correct": 2.0, "answered": 0.8, "n": 5.0}
    assert answer_accuracy(["a, b"], ["step one\n#### a, b"], "text")["accuracy"] == 1.0  # reference "#### x"


def test_answer_accuracy_number_is_math_accuracy_and_types_are_checked():
    completions, refs = ["-28", "The answer is 81.", "81", "6.0"], ["-28", "81", "#### 18", 6]
    assert answer_accuracy(completions, refs, "number") == math_accuracy(completions, refs)
    assert answer_accuracy(["-28"], ["-28"])["accuracy"] == 1.0  # number is the default
    assert "number" in ANSWER_TYPES and "text" in ANSWER_TYPES
    with pytest.raises(DataError, match="unknown answer type"):
        answer_accuracy(["x"], ["x"], "words")
    with pytest.raises(DataError, match="empty"):
        answer_accuracy(["x"], [""], "text")
    with pytest.raises(DataError, match="2 completions but 1"):
        answer_accuracy(["x", "y"], ["x"], "text")


@pytest.mark.parametrize(
    "text, answer_type, expected",
    [
        ("The answer is -28.", "number", -28.0),
        ("1,234", "number", 1234.0),
        (7, "number", 7.0),
        ("no number here", "number", None),
        (" a ,b. ", "text", "a, b"),
        (None, "text", None),
    ],
)
def test_scored_answer(text, answer_type, expected):
    assert scored_answer(text, answer_type) == expected
    if isinstance(text, str) and answer_type == "text":
        assert extract_answer(text, answer_type) == expected
