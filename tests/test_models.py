from __future__ import annotations

import pytest
import torch

from maxmargin.models import PerImageStandardize, WideResNet, build_model


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 28, 28)), ("small_cnn", (1, 28, 28)),
                                        ("wrn28_4", (3, 32, 32))])
def test_output_shape(name, shape):
    model = build_model(name, shape[0], 10, shape[-1])
    assert model(torch.rand(2, *shape)).shape == (2, 10)


def test_wideresnet_depth_and_width():
    model = WideResNet(28, 4)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 25            # stem + 2 per block × 12 blocks
    assert model.fc.in_features == 256
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(5.85e6, rel=0.01)


def test_per_image_standardization_removes_brightness_and_contrast():
    x = torch.rand(3, 3, 32, 32) * 0.5
    s = PerImageStandardize()
    assert torch.allclose(s(x), s(0.8 * x + 0.1), atol=1e-5)
    z = s(x).flatten(1)
    assert torch.allclose(z.mean(1), torch.zeros(3), atol=1e-5)


def test_unknown_model_is_value_error():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet9000", 3, 10, 32)
