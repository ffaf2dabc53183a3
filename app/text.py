"""User-supplied text (field, file and model names) on the page as text, never as markup.

Streamlit renders messages, captions and widget labels as markdown: a field named
``[re-enter your password](https://...)`` in a shared parcel file became a live link in the
app's own green box, ``![x](https://...)`` an image the browser fetched from a third party,
``$...$`` LaTeX and ``:red[...]`` coloured text (review 12). :func:`plain` escapes what
markdown would act on. The map's tooltips are HTML inside JavaScript: :func:`tooltip_text`.
"""

from __future__ import annotations

import html
import re

_MARKDOWN = re.compile(r"([\\`*_\[\]<>$~|#{}&])")
"""Characters markdown (and Streamlit's extensions: LaTeX, directives) acts on anywhere."""
_LINKED = re.compile(r"(?<=\w)(?=://)|(?<=\bwww)(?=\.)|(?<=@)", re.IGNORECASE)
"""Where markdown would make a bare URL (``https://``, ``www.``) or an e-mail address a link:
it finds them in the text after every escape (a backslash or a character reference still
left a live link), so an invisible word joiner (U+2060) goes there."""
_LINE_START = re.compile(r"^(\s*)(\d*)([-+>.)])")
"""What makes a list, a quote or a heading at the start of a text."""


def plain(text: object) -> str:
    """``text`` escaped for Streamlit's markdown: shown as it is written."""
    escaped = _MARKDOWN.sub(r"\\\1", str(text))
    escaped = _LINKED.sub("\u2060", escaped)
    return _LINE_START.sub(r"\1\2\\\3", escaped)


def tooltip_text(text: object) -> str:
    """``text`` for a folium tooltip, shown as it is written: folium puts a tooltip's text into
    the map's HTML inside a JavaScript template literal, as it is, so a name held markup
    (``<img onerror=...>``) or JavaScript (``${...}``, a backquote, a backslash) that ran in
    the page (review 12). HTML-escaped, and the template literal's own characters as HTML
    character references, which JavaScript leaves alone and the tooltip shows as the
    characters."""
    escaped = html.escape(str(text), quote=True)
    return escaped.replace("\\", "&#92;").replace("`", "&#96;").replace("$", "&#36;")
