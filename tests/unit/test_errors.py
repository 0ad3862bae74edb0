"""One error hierarchy: every error Hyperplane raises on purpose is a HyperplaneError, keeps
the builtin base its callers catch, and the C core's return codes become these classes."""

import errno
import os

import pytest

import hyperplane
from hyperplane import errors, model

core = pytest.importorskip("hyperplane._core")

BUILTIN_BASE = {
    "ConfigError": ValueError, "LabError": RuntimeError, "ControlError": RuntimeError,
    "ErrorAnswer": RuntimeError, "NotRunning": RuntimeError, "CoreError": OSError,
    "CoreMemoryError": MemoryError, "CoreRefused": ValueError, "StateMismatch": ValueError,
    "CoreLimit": RuntimeError,
}


EXPORTED_ERRORS = [n for n in hyperplane.__all__ if isinstance(getattr(hyperplane, n), type)
                   and issubclass(getattr(hyperplane, n), BaseException)]


@pytest.mark.parametrize("name", EXPORTED_ERRORS)
def test_every_exported_error_has_the_one_root_and_its_old_base(name):
    cls = getattr(hyperplane, name)
    assert issubclass(cls, hyperplane.HyperplaneError)
    assert issubclass(cls, BUILTIN_BASE.get(name, Exception))


def test_the_old_import_paths_name_the_same_classes():
    from hyperplane import cli, control, runtime
    from hyperplane.config import ConfigError
    from hyperplane.lab import LabError
    assert ConfigError is errors.ConfigError and LabError is errors.LabError
    assert control.ControlError is errors.ControlError
    assert control.NotRunning is errors.NotRunning and control.ErrorAnswer is errors.ErrorAnswer
    assert runtime.RuntimeFailure is errors.RuntimeFailure and cli.CliError is errors.CliError


@pytest.mark.parametrize("code, cls", [(errno.ENOMEM, errors.CoreMemoryError),
                                       (errno.EINVAL, errors.CoreRefused),
                                       (errno.ENOENT, errors.CoreRefused),
                                       (errno.ENOSPC, errors.CoreLimit),
                                       (errno.EBUSY, errors.CoreError)])
def test_errno_codes_map_to_one_class_each(code, cls):
    e = errors.errno_error(-code, "hp_thing", "the core's words")
    assert type(e) is cls and e.errno == code
    assert str(e).endswith("hp_thing: the core's words")
    assert str(errors.errno_error(-code, "hp_thing")).endswith(f"hp_thing: {os.strerror(code)}")


@pytest.mark.parametrize("nat_class", [core.Nat, model.Nat], ids=["core", "model"])
def test_the_core_and_the_model_refuse_alike(nat_class):
    nat = nat_class(capacity=1024, port_range=(1000, 1063))
    with pytest.raises(errors.CoreRefused, match="cannot add ENI 5 to group 9"):
        nat.group_add_eni(9, 5)
    with pytest.raises(errors.CoreRefused, match="no source"):
        nat.set_quota("10.9.9.9", 1, 1)
    group, eni = nat.add_group(), nat.add_eni("10.0.2.4")
    with pytest.raises(errors.CoreRefused, match="not in group"):
        nat.group_retire_eni(group, eni)
    with pytest.raises(errors.CoreRefused, match="cannot move source"):
        nat.set_source_group("10.9.9.9", group)


def test_the_data_plane_maps_its_codes():
    nat = core.Nat(capacity=1024, port_range=(1000, 1063))
    dp = core.DataPlane(nat)
    try:
        assert dp.del_neighbor("10.0.0.1") is False      # -ENOENT: nothing to delete
    finally:
        dp.close()


def test_a_state_file_from_another_lab_is_a_state_mismatch(tmp_path):
    kw = dict(capacity=1024, port_range=(1000, 1063), state_path=tmp_path / "nat.state")
    nat = core.Nat(**kw)
    nat.add_eni("10.0.2.4")
    del nat
    nat = core.Nat(**kw)
    with pytest.raises(errors.StateMismatch, match="ENI 0 of the state file has 10.0.2.4"):
        nat.add_eni("10.0.7.4")
