"""The test tree imports its modules by basename (pytest's default "prepend" import mode, and the
namespace tests import helpers from each other as `from test_observe import ...`), so two test
files with one basename in different folders stop the whole collection with "import file
mismatch". This finds such a pair before CI does."""

import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    folders = collections.defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name != "conftest.py" and "__pycache__" not in path.parts:
            folders[path.name].append(str(path.parent.relative_to(TESTS)))
    shared = {name: where for name, where in folders.items() if len(where) > 1}
    assert not shared, f"test modules with one basename in several folders: {shared}"
