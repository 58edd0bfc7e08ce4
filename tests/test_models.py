"""Tests of odenet's classifiers: shapes, augmentation, spectral norm, config, solver swaps, errors."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from odenet import ConvField, ImageClassifier, LayerwiseField, MLPClassifier, MLPField, ODEBlock, build_model


def test_image_classifier_shapes_and_blocks():
    torch.manual_seed(0)
    m = ImageClassifier(width=8, num_blocks=2, method="euler", steps=3)
    x = torch.randn(4, 1, 8, 8)
    assert m(x).shape == (4, 10)
    blocks = m.ode_blocks()
    assert len(blocks) == 2 and all(isinstance(b, ODEBlock) for b in blocks)
    assert all(isinstance(b.field, ConvField) for b in blocks)
    assert m.nfe() == {"forward": 6, "backward": 0}
    assert m.features(x).shape == (4, 8, 8, 8)


def test_mlp_classifier_shapes_and_flattening():
    torch.manual_seed(0)
    m = MLPClassifier(64, 10, hidden=16, method="rk4", steps=2)
    assert m(torch.randn(3, 64)).shape == (3, 10)
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)  # [B, ...] flattened
    assert isinstance(m.ode_blocks()[0].field, MLPField)


def test_augmentation_zero_pads_the_state():
    torch.manual_seed(0)
    m = ImageClassifier(width=4, augment=3, method="euler", steps=2)
    seen = {}
    m.ode_blocks()[0].register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    out = m.features(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 7, 8, 8)
    x0 = seen["x"]
    assert x0.shape == (2, 7, 8, 8)
    assert torch.equal(x0[:, 4:], torch.zeros(2, 3, 8, 8)) and x0[:, :4].abs().sum() > 0
    assert m.head.in_features == 7
    mlp = MLPClassifier(2, 2, hidden=5, augment=2, method="euler", steps=1)
    assert mlp.features(torch.randn(6, 2)).shape == (6, 7)


def test_augmented_state_evolves_under_the_field():
    """The extra channels start at zero but the field moves them (they are not dead)."""
    torch.manual_seed(1)
    m = MLPClassifier(2, 2, hidden=3, augment=2, method="euler", steps=2)
    feats = m.features(torch.randn(5, 2))
    assert feats[:, 3:].abs().sum() > 0


def test_spectral_norm_wraps_only_the_field_layers():
    m = ImageClassifier(width=4, spectral_norm=True, method="euler", steps=1)
    field = m.ode_blocks()[0].field
    assert parametrize.is_parametrized(field.conv1.conv, "weight")
    assert parametrize.is_parametrized(field.conv2.conv, "weight")
    assert not parametrize.is_parametrized(m.stem[0], "weight")
    assert not parametrize.is_parametrized(m.head, "weight")
    mlp = MLPClassifier(2, 2, hidden=8, spectral_norm=True, method="euler", steps=1)
    with torch.no_grad():
        for _ in range(30):
            mlp(torch.randn(4, 2))
    for lin in mlp.ode_blocks()[0].field.linears:
        assert float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2)) == pytest.approx(1.0, abs=1e-2)


def test_layers_gives_untied_layerwise_field():
    m = MLPClassifier(2, 2, hidden=4, layers=3, method="euler", steps=3, t1=3.0)
    field = m.ode_blocks()[0].field
    assert isinstance(field, LayerwiseField) and len(field) == 3
    x = torch.randn(5, 2)
    h = m.stem(x)
    for b in field.blocks:
        h = h + b(None, h)
    assert torch.allclose(m(x), m.head(h), atol=1e-6)


def test_config_rebuilds_the_model_and_records_the_solver():
    torch.manual_seed(0)
    m = ImageClassifier(width=6, augment=2, time="film", groups=2, method="euler", steps=4)
    cfg = m.config
    assert cfg["width"] == 6 and cfg["method"] == "euler" and cfg["steps"] == 4
    clone = type(m)(**cfg)
    clone.load_state_dict(m.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(clone(x), m(x))
    m.configure_solver(method="dopri5")
    assert m.config["method"] == "dopri5"
    again = build_model("image", **m.config)
    assert again.config == m.config
    cfg["width"] = 99  # a copy
    assert m.config["width"] == 6


def test_configure_and_using_solver_apply_to_every_block():
    m = ImageClassifier(width=4, num_blocks=2, method="euler", steps=2)
    x = torch.randn(2, 1, 8, 8)
    assert m.configure_solver(steps=5) is m
    m(x)
    assert [b.nfe_forward for b in m.ode_blocks()] == [5, 5]
    with m.using_solver(method="rk4", steps=1):
        m(x)
        assert [b.nfe_forward for b in m.ode_blocks()] == [4, 4]
    assert all(b.solver_config()["method"] == "euler" for b in m.ode_blocks())
    with pytest.raises(ValueError, match="unknown method"):
        m.configure_solver(method="nope")
    assert all(b.solver_config()["steps"] == 5 for b in m.ode_blocks())


def test_trained_resnet_evaluated_as_neural_ode():
    """Weights trained under Euler give nearly the same logits under dopri5 with many steps' accuracy."""
    torch.manual_seed(0)
    m = MLPClassifier(2, 2, hidden=8, method="euler", steps=200)
    x = torch.randn(16, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    euler = m(x)
    with m.using_solver(method="dopri5", rtol=1e-7, atol=1e-9):
        node = m(x)
    assert (euler - node).abs().max() < 5e-3


def test_data_shape_mismatch_errors():
    m = ImageClassifier(in_channels=1, width=4, method="euler", steps=1)
    with pytest.raises(ValueError, match=r"expects images of shape \[B, 1, 8, 8\].*got \(2, 3, 8, 8\)"):
        m(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\].*got \(2, 1, 16, 16\)"):
        m(torch.zeros(2, 1, 16, 16))
    mlp = MLPClassifier(4, 3, hidden=4, method="euler", steps=1)
    with pytest.raises(ValueError, match=r"in_features=4.*got \(5, 3\)"):
        mlp(torch.zeros(5, 3))


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model kind 'cnn'; valid kinds: image, mlp"):
        build_model("cnn")
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['depthh'\]"):
        build_model("mlp", in_features=2, num_classes=2, depthh=3)
    with pytest.raises(TypeError, match=r"needs argument\(s\) \['in_features', 'num_classes'\]"):
        build_model("mlp")
    with pytest.raises(TypeError, match="unknown argument"):
        ImageClassifier(widht=3)
    with pytest.raises(ValueError, match="width"):
        ImageClassifier(width=0)
    with pytest.raises(ValueError, match="time"):
        MLPClassifier(2, 2, time="sin", method="euler", steps=1)
