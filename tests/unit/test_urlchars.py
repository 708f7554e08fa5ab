"""Image URLs holding characters that yarl would drop or rewrite are refused as sent (app.fetch.urlchars)."""

from __future__ import annotations

import pytest

from app.fetch.urlchars import url_text_problem

FIX = "percent-encode it (e.g. %0A for a newline), or send each URL as its own item"


@pytest.mark.parametrize(
    ("char", "code"),
    [
        ("\n", "000A"),
        ("\r", "000D"),
        ("\t", "0009"),
        ("\x00", "0000"),
        ("\x7f", "007F"),
        ("\x85", "0085"),
        ("\u00a0", "00A0"),
        ("\u200b", "200B"),
        ("\u202e", "202E"),
        ("\u2028", "2028"),
        ("\ufeff", "FEFF"),
    ],
    ids=["lf", "cr", "tab", "nul", "del", "nel", "nbsp", "zero-width-space", "rtl-override", "line-sep", "bom"],
)
def test_url_with_a_control_or_invisible_character_is_refused_naming_it(char, code):
    url = f"https://a.test/a.jpg{char}https://b.test/b.jpg"
    assert url_text_problem(url) == (f"the URL holds U+{code}, an invisible or control character, at index 20: {FIX}")


def test_url_problem_names_the_first_such_character_of_a_long_data_uri():
    url = "data:image/png;base64," + "A" * (1 << 20) + "\n" + "A" * 100 + "\t"
    assert url_text_problem(url) == (
        f"the URL holds U+000A, an invisible or control character, at index {22 + (1 << 20)}: {FIX}"
    )


@pytest.mark.parametrize("url", [" https://a.test/a.jpg", "https://a.test/a.jpg "], ids=["leading", "trailing"])
def test_url_with_a_space_at_either_end_is_refused(url):
    assert url_text_problem(url) == "the URL starts or ends with a space: remove it"


@pytest.mark.parametrize(
    "url",
    [
        "https://a.test/a.jpg",
        "https://a.test/caf\u00e9 au lait.jpg",
        "https://\u4f8b\u3048.test/\U0001f600.jpg",
        "https://a.test/a%0Ab.jpg",
        "data:image/png;base64," + "A" * 4096,
    ],
    ids=["plain", "accent-and-inner-space", "idn-and-emoji", "percent-encoded-newline", "data-uri"],
)
def test_url_of_printable_characters_is_taken_as_sent(url):
    assert url_text_problem(url) is None
