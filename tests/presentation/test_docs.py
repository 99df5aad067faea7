"""help(ConvexitySampler) states the rule that runs by default, from where it is defined."""

from __future__ import annotations

import pydoc
import re

import optuna_convexity
from optuna_convexity import _criteria


def _help() -> str:
    return pydoc.render_doc(optuna_convexity.ConvexitySampler, renderer=pydoc.plaintext)


def test_help_names_the_default_criterion_and_its_rule() -> None:
    text = re.sub(r"\s+", " ", _help().replace("|", " "))
    default = _criteria.DEFAULT_CRITERION
    assert f'``"{default}"`` (the default): {_criteria.describe(default)}.' in text
    assert text.count("(the default)") == 1
    for criterion in _criteria.CRITERIA:
        assert f'``"{criterion}"``' in text and _criteria.describe(criterion) in text
    assert "filled in from" not in text  # the marker was replaced


def test_help_does_not_state_one_rule_as_what_always_happens() -> None:
    text = _help()
    assert "lowest finite, positive" not in text
    assert "promote the best by ``criterion``" in text
