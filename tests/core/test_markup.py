"""flatness.core.markup: names from data files made inert for Markdown, CSV, figures and terminals."""

import pytest

from flatness.core.markup import MAX_NAME, csv_cell, figure_text, md_text, plain


def test_plain_is_one_printable_line_of_bounded_length():
    assert plain("a\x1b[2Jb\r\nc\x07d\u2028e\x85f") == "a [2Jb  c d e f"
    assert plain(12.5) == "12.5" and plain(None) == "None"
    assert plain("x" * MAX_NAME) == "x" * MAX_NAME
    long = plain("y" * (MAX_NAME + 1))
    assert len(long) == MAX_NAME and long.endswith("…") and long[:-1] == "y" * (MAX_NAME - 1)


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("worst_case", r"worst\_case"),
        ("![x](/etc/passwd)", r"\!\[x\](/etc/passwd)"),
        ("<script>alert(1)</script>", r"\<script\>alert(1)\</script\>"),
        ("a | b", r"a \| b"),
        ("# *bold* `code` ~x~ &amp; \\", r"\# \*bold\* \`code\` \~x\~ \&amp; \\"),
        ("lambda_1 (p=0.05).", r"lambda\_1 (p=0.05)."),  # "." and "(" alone make no markup
        ("line\nbreak", "line break"),
    ],
)
def test_md_text_escapes_every_character_that_could_start_markup(name, escaped):
    assert md_text(name) == escaped


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_that_start_like_a_formula_become_text(start):
    assert csv_cell(start + "HYPERLINK(1)") == "'" + start + "HYPERLINK(1)"


def test_csv_cell_passes_other_text_and_every_non_string_unchanged():
    for value in ("amp", "a=b", "", -1.5, 3, True, None):
        assert csv_cell(value) == value and type(csv_cell(value)) is type(value)


def test_figure_text_never_starts_mathtext():
    assert figure_text("$x^2$ cost\nnew") == r"\$x^2\$ cost new"
    assert figure_text("plain") == "plain"
