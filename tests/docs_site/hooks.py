"""MkDocs hooks for the offline docs site: math becomes MathML while the site is built.

`pymdownx.arithmatex` (generic mode) finds the `$...$` and `$$...$$` math in a page and wraps it as
`<span class="arithmatex">\\(...\\)</span>` or `<div class="arithmatex">\\[...\\]</div>`; this hook
replaces each with the MathML that `latex2mathml` renders, which browsers typeset natively, so the
pages need no JavaScript renderer and no network access.
"""
import html
import re

from latex2mathml.converter import convert

_MATH = re.compile(r'<(span|div) class="arithmatex">\\[(\[](.*?)\\[)\]]</\1>', re.S)
_TEXT = re.compile(r"\\text\{([^{}]*)\}")


def _unescape_text(m: re.Match) -> str:
    "TeX's escaped characters inside `\\text{...}` (`\\_`, `\\%`, `\\&`, ...), which latex2mathml keeps escaped."
    return r"\text{" + re.sub(r"\\([_%&#$])", r"\1", m.group(1)) + "}"


def _mathml(m: re.Match) -> str:
    tex = _TEXT.sub(_unescape_text, html.unescape(m.group(2)).strip())
    display = "block" if m.group(1) == "div" else "inline"
    return f'<{m.group(1)} class="arithmatex">{convert(tex, display=display)}</{m.group(1)}>'


def on_page_content(html_text, page, config, files):
    "Render every math span and block of `page` to MathML."
    return _MATH.sub(_mathml, html_text)
