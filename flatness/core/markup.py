"""Names from data files made safe for the places a report puts them: Markdown, CSV, figures, a terminal.

A sweep table, a probe file or a run's ``config.json`` is often someone else's file, so every name
read from one (a measure, method, cell, model, dataset, seed, a column of ``cells.csv``) is data, never
markup: in Markdown it cannot open a link, an image, raw HTML or a table cell; in a CSV cell it cannot
start a spreadsheet formula; in a figure it cannot switch matplotlib to mathtext; on a terminal it
cannot move the cursor. One module owns these rules so that every report applies the same ones.
"""

from __future__ import annotations

import re

# The characters that can start Markdown markup inside a line: links and images need "[", raw HTML and
# autolinks "<", entities "&", emphasis and code "*", "_", "`", "~", table cells "|", headings "#".
# CommonMark lets a backslash escape each of them; "." or "(" alone never make markup.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~!#])")
# C0 and C1 control characters (ESC, CR, BEL, ...) and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What a spreadsheet treats as the start of a formula when a cell begins with it (OWASP's list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
MAX_NAME = 200


def plain(text: object) -> str:
    """``text`` as one printable line: control characters become spaces, at most ``MAX_NAME`` characters."""
    line = _CONTROL.sub(" ", str(text))
    return line if len(line) <= MAX_NAME else line[: MAX_NAME - 1] + "…"


def md_text(text: object) -> str:
    """``text`` as literal Markdown text: every character that could start markup backslash-escaped.

    The rendered page shows the name exactly as written (``worst_case`` stays ``worst_case``), and
    ``![x](/etc/passwd)``, ``<script>`` or ``a | b`` stay text inside a paragraph or a table cell.
    """
    return _MD_SPECIAL.sub(r"\\\1", plain(text))


def csv_cell(text: object) -> object:
    """A CSV cell that a spreadsheet shows as text: a string starting like a formula gets a leading ``'``.

    Numbers, booleans and None pass through unchanged.
    """
    if isinstance(text, str) and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def figure_text(text: object) -> str:
    """``text`` for a matplotlib label: one line, ``$`` escaped so that it never starts mathtext."""
    return plain(text).replace("$", r"\$")
