"""docs/tutorial.md runs: every `$ command` of its console blocks is run in order against a lab
of its own, and every output line the text shows must still be printed (… stands for what
changes from run to run: random ports, pids, times).

`python3 tests/ns/test_tutorial.py` runs the tutorial and prints what each command printed
(to refresh the text after a change)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
CLI = f"{sys.executable} -m hyperplane.cli"
COMMAND_TIMEOUT_S = 120


def steps(text: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of every console block, in order."""
    out = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out and line.strip():
                out[-1][1].append(line)
    return out


def localize(command: str, prefix: str) -> str:
    """The command as the test runs it: without sudo (it runs as root), this checkout's
    hyperplane, on the test's lab (--prefix after each hyperplane subcommand)."""
    command = re.sub(r"\bsudo ", "", command)
    return re.sub(r"\bhyperplane (\S+)", lambda m: f"{CLI} {m.group(1)} --prefix {prefix}",
                  command)


def matches(expected: str, actual_lines: list[str]) -> bool:
    # … is anything; a run of spaces is any run (column widths follow the longest cell).
    pattern = ".*".join(r"\s+".join(map(re.escape, part.split()))
                        for part in expected.split("…"))
    return any(re.search(pattern, line) for line in actual_lines)


def run_tutorial(prefix: str, on_output=None) -> list[str]:
    """Runs every command; returns the problems found (an expected line not printed)."""
    problems, background = [], []
    try:
        for command, expected in steps(TUTORIAL.read_text()):
            local = localize(command, prefix)
            if local.rstrip().endswith("&"):
                background.append(subprocess.Popen(["bash", "-c", local.rstrip()[:-1]],
                                                   cwd=ROOT, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL))
                continue
            r = subprocess.run(["bash", "-c", local], cwd=ROOT, capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT_S)
            actual = (r.stdout + r.stderr).splitlines()
            if on_output:
                on_output(command, r.stdout + r.stderr)
            for line in expected:
                if not matches(line, actual):
                    problems.append(f"$ {command}\n  expected: {line}\n  got:\n    "
                                    + "\n    ".join(actual[:60]))
    finally:
        for p in background:
            p.kill()
            p.wait()
    return problems


def test_every_command_of_the_tutorial_says_what_the_text_says():
    from conftest import _sweep, new_prefix
    prefix = new_prefix()
    try:
        problems = run_tutorial(prefix)
    finally:
        subprocess.run(shlex.split(f"{CLI} down --prefix {prefix}"), capture_output=True,
                       timeout=120)
        _sweep(prefix)
    assert not problems, "\n\n".join(problems)


def test_an_output_that_changed_is_caught():
    assert matches("tcp    TIME_WAIT  …s  10.0.1.4:…", ["tcp TIME_WAIT 118s  10.0.1.4:4000"])
    assert not matches("tcp    TIME_WAIT  …s", ["tcp ESTABLISHED 118s"])


def test_the_tutorial_has_commands_and_outputs():
    found = steps(TUTORIAL.read_text())
    assert len(found) >= 15
    assert sum(1 for _, expected in found if expected) >= 12


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import _sweep, new_prefix
    lab = new_prefix()
    try:
        bad = run_tutorial(lab, lambda c, o: print(f"$ {c}\n{o}"))
    finally:
        subprocess.run(shlex.split(f"{CLI} down --prefix {lab}"), capture_output=True,
                       timeout=120)
        _sweep(lab)
    print("\n\n".join(bad) or "all outputs as the text says")
