"""The names users give things follow one rule each, checked whole: a trailing newline never passes."""

from __future__ import annotations

import pytest

from alignflow.errors import UsageError
from alignflow.names import check, is_valid


@pytest.mark.parametrize("kind, good, bad", [
    ("pipeline", ["demo", "nightly-qwen.v2", "a_b"], ["", "Demo", "demo\n", "../x", "a/b", "-x", "x" * 64]),
    ("dataset", ["demo/sft-extra", "demo/a/b"], ["demo", "demo/x\n", "demo/", "/x", "demo//x", "demo/../x"]),
    ("alias", ["production", "staging-2"], ["", "a/b", "Prod", "1st", "latest\n", "x" * 64]),
])
def test_each_kind_of_name_has_one_rule(kind, good, bad):
    assert all(is_valid(kind, name) for name in good)
    assert not any(is_valid(kind, name) for name in bad)


def test_a_refused_name_is_named_with_where_it_came_from_and_the_rule():
    with pytest.raises(UsageError, match=r"data add NAME: 'demo/x\\n' is not a dataset name; a dataset name is "
                                         "PIPELINE/NAME") as err:
        check("dataset", "demo/x\n", "data add NAME")
    assert err.value.exit_code == 2
