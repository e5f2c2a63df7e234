"""Finding the final answer in a model's output, shared by the answer and format rewards."""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

# Longer outputs are scored 0 without scanning: a policy must not win by flooding the scorer.
MAX_SOLUTION_CHARS = 200_000

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]*)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
# Thousands separators only in groups of three, so "1,2,3" reads as three numbers, not 123.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
# Unicode minus signs and dashes a model may emit in front of a number.
_MINUS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\ufe63": "-", "\uff0d": "-"})


def _canonical_text(text: str) -> str:
    """NFKC folds full-width and other compatibility digits (full-width 42 reads as 42)."""
    return unicodedata.normalize("NFKC", text).translate(_MINUS)


def normalize_number(text: str) -> Decimal | None:
    """The single number in ``text`` (``$1,234.50`` → ``1234.5``), or None when there is none or more than one."""
    numbers = _NUMBER.findall(_canonical_text(text))
    if len(numbers) != 1:
        return None
    try:
        return Decimal(numbers[0].replace(",", "")).normalize()
    except InvalidOperation:
        return None


def _answer_key(answer: str) -> Decimal | str:
    number = normalize_number(answer)
    return number if number is not None else " ".join(answer.split()).casefold()


def _last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def extract_final_answer(solution: str) -> str | None:
    """The answer a solution commits to, or None when it commits to none or hedges between several.

    Precedence: ``<answer>`` tags, then GSM8K's ``#### N``, then ``\\boxed{N}``, then the last number.
    Several tags (or several ``####`` lines) that disagree count as no answer.
    """
    if not solution or len(solution) > MAX_SOLUTION_CHARS:
        return None
    text = _canonical_text(solution)
    for pattern in (ANSWER_TAG, _HASHES, _BOXED):
        found = [m.strip() for m in pattern.findall(text)]
        if found:
            distinct = {_answer_key(f) for f in found}
            return found[-1] if len(distinct) == 1 else None
    return _last_number(text)
