"""MkDocs hook: links from a docs page to a file of the repository outside docs/ (the model's
code, an example config, a test) work on the site as they do on a forge.

A Markdown link such as ``[nat.py](../hyperplane/model/nat.py#L40)`` is left alone in the
source, so it works when the page is read in the repository; on the site it points to a copy of
that file under ``_source/``, which this hook adds to the build. A link to a file that does not
exist is reported as a warning, which ``mkdocs build --strict`` turns into a failure: the site
cannot point at code that was moved or removed."""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.repo_links")

SOURCE_DIR = "_source"
# [text](target) and [text](target "title"), not images of the docs themselves
_LINK = re.compile(r"(?P<open>\]\()(?P<target>[^)\s#]+)(?P<fragment>#[^)\s]*)?(?P<rest>[^)]*\))")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _repo_root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _outside_target(page_src: str, target: str, config) -> str | None:
    """The repository-relative path a page's link points to when that is outside docs/,
    else None (a link within the site, a URL, or an anchor)."""
    if _SCHEME.match(target) or target.startswith("/"):
        return None
    docs = Path(config["docs_dir"]).resolve()
    resolved = (docs / posixpath.dirname(page_src) / target).resolve()
    if resolved == docs or docs in resolved.parents:
        return None
    root = _repo_root(config)
    if root not in resolved.parents:
        return None
    return resolved.relative_to(root).as_posix()


def _without_fences(markdown: str) -> str:
    return _FENCE.sub("", markdown)


def on_files(files, config):
    """Adds a copy of every repository file that a page links to."""
    root = _repo_root(config)
    wanted = set()
    for page in files.documentation_pages():
        text = _without_fences(Path(page.abs_src_path).read_text(encoding="utf-8"))
        for match in _LINK.finditer(text):
            rel = _outside_target(page.src_uri, match["target"], config)
            if rel and (root / rel).is_file() and not rel.endswith(".md"):
                wanted.add(rel)
    for rel in sorted(wanted):
        files.append(File.generated(config, f"{SOURCE_DIR}/{rel}", abs_src_path=str(root / rel)))
    return files


def on_page_markdown(markdown, page, config, files):
    root = _repo_root(config)

    def rewrite(match: re.Match) -> str:
        rel = _outside_target(page.file.src_uri, match["target"], config)
        if rel is None:
            return match.group(0)
        if not (root / rel).exists():
            log.warning("%s: link to %s, which is not in the repository", page.file.src_uri, rel)
            return match.group(0)
        if rel.endswith(".md") or (root / rel).is_dir():
            log.warning("%s: link to %s outside docs/: link a page of the site instead",
                        page.file.src_uri, rel)
            return match.group(0)
        here = posixpath.dirname(page.file.src_uri)
        new = posixpath.relpath(f"{SOURCE_DIR}/{rel}", here or ".")
        return f"{match['open']}{new}{match['fragment'] or ''}{match['rest']}"

    # Links inside code blocks are code, not links.
    out, last = [], 0
    for fence in _FENCE.finditer(markdown):
        out.append(_LINK.sub(rewrite, markdown[last:fence.start()]))
        out.append(fence.group(0))
        last = fence.end()
    out.append(_LINK.sub(rewrite, markdown[last:]))
    return "".join(out)
