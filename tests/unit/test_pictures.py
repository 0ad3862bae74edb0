"""The pictures in docs/pictures/ are drawn from the model: regenerated text forms must equal
the committed ones, each image must carry its text form's hash, and a changed transition
table must be caught."""

import shutil

import pytest

from hyperplane.model.conntrack import tcp_transition
from hyperplane.teach import pictures
from hyperplane.vocab import S


def test_pictures_match_the_model():
    assert pictures.stale() == [], "the model changed: run `make pictures` and commit docs/pictures"


def test_a_changed_transition_table_is_caught(monkeypatch):
    def fin_closes_at_once(state, flags, event, d):
        if state == S["ESTABLISHED"] and event == "FIN":
            return S["CLOSE"], flags
        return tcp_transition(state, flags, event, d)
    monkeypatch.setattr(pictures, "tcp_transition", fin_closes_at_once)
    changed = pictures.tcp_dot()
    assert "ESTABLISHED -> CLOSE [label=\"FIN from inside" in changed
    assert pictures.stale(forms={"tcp-states.dot": changed}) == ["tcp-states.dot"]


def test_an_image_not_redrawn_is_caught(tmp_path):
    for name in ("tcp-states.dot", "tcp-states.svg"):
        shutil.copy(pictures.OUT_DIR / name, tmp_path / name)
    form = {"tcp-states.dot": pictures.tcp_dot()}
    assert pictures.stale(tmp_path, form) == []
    svg = tmp_path / "tcp-states.svg"
    svg.write_text(svg.read_text().replace(pictures.HASH_MARK, pictures.HASH_MARK + "0"))
    assert pictures.stale(tmp_path, form) == ["tcp-states.dot"]


@pytest.mark.parametrize("state", ["SYN_SENT", "ESTABLISHED", "TIME_WAIT", "CLOSE"])
def test_every_tcp_state_is_drawn_with_its_timeouts(state):
    assert f'{state} [label="{state}\\naws ' in pictures.tcp_dot()
