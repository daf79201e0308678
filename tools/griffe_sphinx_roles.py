"""A Griffe extension for ``make docs``: the docstrings' bits of reStructuredText, in Markdown.

The package's docstrings name other objects Sphinx-style (:class:`RejectedRecord`,
:func:`decode_reply`), which Markdown would print as text: the name is shown as code, as the
docstrings' double backticks are. A paragraph that ends in ``::`` introduces an indented code
block, which Markdown renders as code too: the ``::`` is shown as ``:``, as Sphinx shows it.
The docstrings themselves stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|const|mod|exc|obj):`(~?)([^`]+)`")
_LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _as_code(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):  # :class:`~a.b.C` shows as C, as in Sphinx
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class SphinxRolesAsCode(griffe.Extension):
    """Rewrites every docstring of the loaded package: ``:role:`name``` to ```name```, ``::``
    ending a paragraph to ``:``."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._rewrite(pkg)

    def _rewrite(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            value = _ROLE.sub(_as_code, obj.docstring.value)
            obj.docstring.value = _LITERAL_BLOCK.sub(":", value)
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite(member)  # type: ignore[arg-type]
