"""MkDocs hook (mkdocs.yml ``hooks:``): the docstrings' Sphinx roles, rendered plainly in the API reference.

The docstrings cross-reference with Sphinx roles (``:func:`~depthprobe.models.load_model```), which
mkdocstrings renders as the literal role followed by the code span; this shows the code span alone,
with the last name only where the role had ``~``.
"""

import re

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):\s*<code>(~?)([^<]+)</code>")


def _plain(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(_plain, html)
