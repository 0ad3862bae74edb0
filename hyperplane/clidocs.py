"""docs/cli.md, generated from the parser (`make cli-docs`, or `python -m hyperplane.clidocs >
docs/cli.md`), so the reference cannot drift from `hyperplane --help`: a unit test fails when
the page is stale."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

WIDTH = 100          # the help's width on the page, whatever the terminal

INTRO = """\
# Command line reference

This page is generated from the parser by `make cli-docs`; a unit test fails when it is stale.
Every command's `--help` says the same.

`-j` / `--json` is accepted before or after the command (`hyperplane -j stats`,
`hyperplane stats -j`), as `ip -j` is. Commands that need root say so; `check`,
`completion` and the commands that only ask the data plane (`status`, `conntrack`, `eni`,
`stats`) do not need it beyond access to the run folder.
"""

COMPLETION = """\
## Shell completion

Generated from the parser (shtab), so it offers exactly the commands and options there are:

```sh
hyperplane completion bash --install      # ~/.local/share/bash-completion/completions/hyperplane
hyperplane completion zsh --install       # ~/.zfunc/_hyperplane (add ~/.zfunc to fpath)
hyperplane completion bash | sudo tee /etc/bash_completion.d/hyperplane   # for every user
```
"""


@contextmanager
def _columns(width: int):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _subcommands(ap: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _table(rows, head=("key", "meaning")) -> str:
    out = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    out += [f"| `{k}` | {v.replace('|', '/')} |" for k, v in rows]
    return "\n".join(out)


def render() -> str:
    from .cli import EXIT_CODES, parser
    from .ctcontrol import CONNECTION_KEYS, EVENT_KEYS
    from .ctfilter import KEY_MEANINGS
    with _columns(WIDTH):
        ap = parser()
        parts = [INTRO, "## hyperplane", "```text", ap.format_help().rstrip(), "```", ""]
        for name, sub in _subcommands(ap).items():
            parts += [f"## hyperplane {name}", "", "```text", sub.format_help().rstrip(),
                      "```", ""]
    parts += ["## Filters (conntrack, conntrack -E, Lab.connections)", "",
              "The options of `hyperplane conntrack` travel to the data plane as a filter "
              "object with these keys (`hyperplane.ctfilter`); the data plane tests them in C "
              "while it scans the table, and on each event for each reader.", "",
              _table(KEY_MEANINGS), "",
              "## JSON keys of a connection", "",
              "Every listing (`conntrack -j`, `--json-lines`, `-D -j`, `-F -j`) gives one object "
              "a connection with these keys (the ones an old release had keep their meaning; new "
              "ones are only added):", "", _table(CONNECTION_KEYS), "",
              "## JSON keys of an event (`conntrack -E -j`, one object a line)", "",
              "An event carries the connection's keys (as it is after the change; as it was, for "
              "DESTROY) and these:", "", _table(EVENT_KEYS), "",
              COMPLETION, "## Exit codes", "", "```text", EXIT_CODES, "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
