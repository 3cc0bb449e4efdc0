"""MLP units view: the top units equal a brute-force ranking of the MLP hidden activation."""

import numpy as np
import pytest
import torch

from lenslab.models import hooknames
from lenslab.probes.mlp_units import MLPUnits, MLPUnitsConfig


def test_top_units_match_brute_force(tiny_any):
    res = MLPUnits().run(tiny_any, "hello there", MLPUnitsConfig(layer=1, position=3, k=5))
    hook = hooknames.mlp_hidden(1)
    hidden = tiny_any.run("hello there", [hook]).activations[hook][0, 3]
    expected = hidden.abs().topk(5).indices.numpy()
    assert np.array_equal(res.units, expected)
    np.testing.assert_allclose(res.values, hidden[torch.as_tensor(expected)].numpy())
    assert res.figures()["units"].data[0].x.shape == (5,)


def test_validation(tiny_gemma):
    with pytest.raises(ValueError, match="out of range"):
        MLPUnits().run(tiny_gemma, "hi", MLPUnitsConfig(layer=9))
    with pytest.raises(ValueError, match="position"):
        MLPUnits().run(tiny_gemma, "hi", MLPUnitsConfig(layer=0, position=10))
