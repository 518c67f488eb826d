"""The loss weights are one value: every default reads DEFAULT_WEIGHTS, and LossWeights
refuses what the losses cannot use, naming it."""

from __future__ import annotations

import inspect
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fdbpl.errors import FDBPLError
from fdbpl.losses import (
    DEFAULT_WEIGHTS,
    FDBPLLoss,
    FirstOrderDifferenceLoss,
    LossWeights,
    PCDLoss,
    RADPLoss,
    SecondOrderDifferenceLoss,
)
from fdbpl.losses.functional import (
    fdbpl_loss,
    first_order_difference_loss,
    pcd_loss,
    radp_loss,
    second_order_difference_loss,
)
from fdbpl.train import TrainConfig

NAMES = ("lambda_neg", "lambda_diff1", "lambda_diff2", "alpha", "delta")
TAKERS = [
    fdbpl_loss,
    first_order_difference_loss,
    pcd_loss,
    radp_loss,
    second_order_difference_loss,
    FDBPLLoss.__init__,
    FirstOrderDifferenceLoss.__init__,
    PCDLoss.__init__,
    RADPLoss.__init__,
    SecondOrderDifferenceLoss.__init__,
]


@pytest.mark.parametrize("taker", TAKERS, ids=lambda f: f.__qualname__)
def test_every_default_is_the_one_value(taker):
    params = inspect.signature(taker).parameters
    taken = [n for n in NAMES if n in params]
    assert taken, taker
    for name in taken:
        assert params[name].default == getattr(DEFAULT_WEIGHTS, name), name
    assert TrainConfig().loss_weights == DEFAULT_WEIGHTS


weights_st = st.builds(
    LossWeights,
    st.floats(0, 10),
    st.floats(0, 10),
    st.floats(0, 10),
    st.floats(0, 10),
    st.floats(-5, 5),
)


@given(weights=weights_st)
def test_the_module_and_the_config_carry_the_value(weights):
    assert FDBPLLoss.from_weights(weights).weights == weights
    config = TrainConfig(**weights.as_kwargs())
    assert config.loss_weights == weights


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("lambda_neg", -1.0, "lambda_neg: expected a finite number >= 0, got -1.0"),
        ("alpha", math.nan, "alpha: expected a finite number >= 0, got nan"),
        ("delta", math.inf, "delta: expected a finite number, got inf"),
        ("lambda_diff2", "1", "lambda_diff2: expected a finite number >= 0, got '1'"),
        ("lambda_diff1", None, "lambda_diff1: expected a finite number >= 0, got None"),
    ],
)
def test_bad_weights_are_refused_by_name(name, value, message):
    with pytest.raises(FDBPLError) as refused:
        LossWeights(**{name: value})
    assert str(refused.value) == message
    with pytest.raises(FDBPLError, match=name):
        TrainConfig(**{name: value})
