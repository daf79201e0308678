"""MkDocs hooks (``hooks:`` in mkdocs.yml) for ``make docs``.

- The site's home page is README.md itself (the README stays the one source): its links into
  ``docs/`` are made relative to docs/, its other relative links point one level up like the
  docs pages' links out of docs/ do.
- Docs pages link to repository files outside docs/ (``../examples/control_app.py``,
  ``../bench/results/x.md``) so that the links work when the repository is browsed. MkDocs knows
  only docs/, and ``--strict`` fails on such a link. Each file that such a link names, if it exists
  in the repository, is copied into the site as it is (``site/repo/<path>``), so the link
  resolves; a link to a file that does not exist is left alone, and still fails the build.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

# a Markdown link or image target that leaves docs/: ](../path) or ](../path#anchor)
_OUTSIDE_LINK = re.compile(r"\]\((\.\./[^)\s#]+)")
# a relative link target in the README: not a URL, an anchor or an absolute path
_README_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#|/)([^)\s]+)")


class _RepoFile(File):
    """A repository file copied into the site as it is, even a .md (not rendered as a page)."""

    def is_documentation_page(self) -> bool:
        return False

    def is_static_page(self) -> bool:
        return False


def _readme_as_index(readme: str) -> str:
    def relink(match: re.Match[str]) -> str:
        target = match.group(1)
        if target.startswith("docs/"):
            return "](" + target.removeprefix("docs/")
        return "](../" + target

    return _README_LINK.sub(relink, readme)


def on_files(files: Files, config: Any) -> Files:
    docs_dir = Path(config["docs_dir"]).resolve()
    repo = Path(config["config_file_path"]).resolve().parent
    readme = repo / "README.md"
    if files.get_file_from_path("index.md") is None and readme.is_file():
        files.append(File.generated(config, "index.md",
                                    content=_readme_as_index(readme.read_text("utf-8"))))
    for page in list(files.documentation_pages()):
        source = page.content_string
        page_dir = (docs_dir / page.src_uri).parent
        for target in sorted(set(_OUTSIDE_LINK.findall(source))):
            path = (page_dir / target).resolve()
            if not path.is_file() or not path.is_relative_to(repo) or path.is_relative_to(docs_dir):
                continue  # not ours to fix: mkdocs reports it (or resolves it) as usual
            # the path mkdocs looks the link up by (relative to docs/, so it starts with ../)
            src_uri = posixpath.normpath(posixpath.join(posixpath.dirname(page.src_uri), target))
            if files.get_file_from_path(src_uri) is None:
                files.append(_RepoFile(src_uri, str(docs_dir), config["site_dir"],
                                       config["use_directory_urls"],
                                       dest_uri="repo/" + path.relative_to(repo).as_posix(),
                                       inclusion=InclusionLevel.INCLUDED))
    return files
