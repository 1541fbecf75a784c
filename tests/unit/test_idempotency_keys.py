"""What an Idempotency-Key may be: one rule (`shop.storage.idempotency`) for the header on
every route, the fast path's parse, and the order commands a consumer reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from shop.storage.idempotency import MAX_KEY_LENGTH, KeyText, is_key

KEY = TypeAdapter(KeyText)


def _valid_key_text(text: str) -> bool:
    try:
        KEY.validate_python(text)
    except ValidationError:
        return False
    return True


@given(st.text(st.characters(max_codepoint=0x2FF), max_size=MAX_KEY_LENGTH + 2))
def test_the_fast_path_and_pydantic_apply_the_same_rule(text: str) -> None:
    assert is_key(text) == _valid_key_text(text)


@pytest.mark.parametrize(
    "text",
    ["k", "k" * MAX_KEY_LENGTH, "7c1e6a3e-create-mug", "a b\tc", "caf\u00e9 \u00ff", "~!{}"],
)
def test_what_a_header_can_carry_is_a_key(text: str) -> None:
    assert is_key(text)
    assert KEY.validate_python(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "k" * (MAX_KEY_LENGTH + 1),
        "a\nb",
        "a\rb",
        "a\x00",
        "\x1f",
        "del\x7f",
        "\u0100",
        "\u2603",
    ],
)
def test_what_no_header_can_carry_is_not(text: str) -> None:
    assert not is_key(text)
    with pytest.raises(ValidationError):
        KEY.validate_python(text)
