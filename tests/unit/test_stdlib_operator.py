"""The `operator/` source root must never shadow the standard library's `operator`."""

import operator
import sysconfig
from pathlib import Path


def test_operator_is_the_stdlib_module() -> None:
    assert operator.itemgetter(1)([10, 20]) == 20
    assert not hasattr(operator, "__path__"), "a package named `operator` shadows the stdlib"
    assert Path(operator.__file__).parent == Path(sysconfig.get_paths()["stdlib"])
