"""`model.layers` becomes a working network, or an error that says exactly which key is wrong."""

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mnist_cnn.config.schema import LayerSpec
from mnist_cnn.config.tree import CONF_DIR
from mnist_cnn.data.datasets import IMAGE_SHAPE as IN_SHAPE
from mnist_cnn.errors import ConfigError
from mnist_cnn.model.build import build_model, count_params, summary
from mnist_cnn.model.layers import KINDS, PARAMS, Layer, kind, plan_layers


def build(layers, mean=None, std=None):
    return build_model(plan_layers(layers, IN_SHAPE, 10), mean, std)


def model_layers(name: str):
    return OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml").layers


def test_seed_cnn_is_the_tutorial_network():
    plan = plan_layers(model_layers("seed_cnn"), IN_SHAPE, 10)
    model = build_model(plan)
    assert count_params(model) == 50_186
    assert model.linear3.in_features == 3136  # inferred, never typed in the config
    assert model(torch.zeros(5, *IN_SHAPE)).shape == (5, 10)
    table = summary(model, plan, IN_SHAPE)
    assert "64x7x7" in table and "3136" in table and "50,186" in table


def test_block_notation_equals_one_layer_per_entry():
    torch.manual_seed(0)
    blocks = build(model_layers("seed_cnn"))
    torch.manual_seed(0)
    flat = build(model_layers("seed_cnn_flat"))
    x = torch.zeros(3, *IN_SHAPE)
    x[:, :, 8:20, 10:18] = torch.rand(3, 1, 12, 8)  # a blank border, as in MNIST: pooling windows of equal values
    assert count_params(blocks) == count_params(flat)
    assert torch.equal(blocks(x), flat(x))  # same modules, same init order, same output
    # A block pools before its ReLU (faster, on a quarter of the values); the gradients stay bit for bit the same.
    assert [type(m).__name__ for m in blocks][:3] == ["Conv2d", "MaxPool2d", "ReLU"]
    blocks(x).square().sum().backward()
    flat(x).square().sum().backward()
    for a, b in zip(blocks.parameters(), flat.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_every_shipped_model_builds_and_runs():
    for path in (CONF_DIR / "model").glob("*.yaml"):
        model = build(OmegaConf.load(path).layers, 0.13, 0.31).eval()
        assert model(torch.rand(2, *IN_SHAPE)).shape == (2, 10), path.name


def test_normalisation_lives_in_the_model():
    layers = [{"type": "flatten"}, {"type": "linear", "out_features": 10}]
    model = build(layers, mean=0.5, std=0.25)
    x = torch.rand(4, *IN_SHAPE)
    expected = model.linear1((x.flatten(1) - 0.5) / 0.25)
    assert torch.allclose(model(x), expected)


def test_strides_and_padding_change_the_inferred_flatten_size():
    layers = [
        {"type": "conv", "out_channels": 8, "kernel_size": 5, "stride": 2},  # 12x12
        {"type": "avgpool", "kernel_size": 3, "stride": 1},  # 10x10
        {"type": "batchnorm"},
        {"type": "dropout", "p": 0.2},
        {"type": "flatten"},
        {"type": "linear", "out_features": 10},
    ]
    model = build(layers)
    assert model.linear5.in_features == 8 * 10 * 10


BAD = [
    (
        [{"type": "conv", "out_channels": 0, "kernel_size": 3}],
        "model.layers[0] conv: out_channels must be a positive integer",
    ),
    (
        [{"type": "conv", "out_channels": 4, "kernel_size": -1}],
        "model.layers[0] conv: kernel_size must be a positive integer",
    ),
    ([{"type": "conv", "out_channels": 4, "kernel_size": 3, "stride": 0}], "model.layers[0] conv: stride must be"),
    ([{"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": -1}], "model.layers[0] conv: padding must be"),
    ([{"type": "conv", "kernel_size": 3}], "model.layers[0] conv: out_channels is required"),
    (
        [{"type": "conv", "out_channels": 4, "kernel_size": 29}],
        "model.layers[0] conv: input is 28x28 (padding 0), kernel_size 29 does not fit",
    ),
    ([{"type": "dropout", "p": 1.5}], "model.layers[0] dropout: p must be in [0, 1)"),
    (
        [{"type": "flatten"}, {"type": "linear", "out_features": 0}],
        "model.layers[1] linear: out_features must be a positive integer",
    ),
    ([{"type": "conv3d"}], "model.layers[0]: unknown type 'conv3d'"),
    ([{"type": "relu", "kernel_size": 2}], "model.layers[0] relu: key 'kernel_size' does not apply to relu"),
    (
        [{"type": "block", "out_channels": 4, "kernel_size": 3, "pool": "median"}],
        "model.layers[0] block: pool must be one of max, avg, none, got 'median'",
    ),
    (
        [{"type": "conv", "out_channels": 4, "kernel_size": 3, "init": "zeros"}],
        "model.layers[0] conv: init must be one of",
    ),
    (
        [{"type": "linear", "out_features": 10}],
        "model.layers[0] linear: input is 1x28x28; add a layer {type: flatten} before it",
    ),
    (
        [{"type": "flatten"}, {"type": "conv", "out_channels": 4, "kernel_size": 3}],
        "model.layers[1] conv: input is already flat (784 features)",
    ),
    (
        [{"type": "flatten"}, {"type": "linear", "out_features": 12}],
        "model.layers[1] linear: out_features is 12 but the dataset has 10 classes",
    ),
    ([{"type": "flatten"}, {"type": "linear", "out_features": 10}, {"type": "relu"}], "no classifier head"),
    ([], "no classifier head"),
]


@pytest.mark.parametrize("layers, message", BAD, ids=[m.split(":")[0] + "|" + m[-25:] for _, m in BAD])
def test_impossible_configs_name_the_layer_and_key(layers, message):
    with pytest.raises(ConfigError) as e:
        build(layers)
    assert message in str(e.value)


def test_spatial_size_reaching_zero_names_the_pool():
    """Five 2x2 max pools take 28 -> 14 -> 7 -> 3 -> 1: the fifth cannot fit."""
    layers = [{"type": "maxpool", "kernel_size": 2}] * 5 + [{"type": "flatten"}, {"type": "linear", "out_features": 10}]
    layers.insert(0, {"type": "relu"})
    with pytest.raises(ConfigError, match=r"model\.layers\[5\] maxpool: input is 1x1, kernel_size 2 does not fit"):
        build(layers)


def test_a_block_pool_that_does_not_fit_names_pool_size():
    layers = [{"type": "block", "out_channels": 4, "kernel_size": 3, "pool_size": 30}]
    with pytest.raises(ConfigError, match=r"model\.layers\[0\] block: input is 26x26, pool_size 30 does not fit"):
        build(layers)


def test_one_registry_of_layer_kinds_drives_schema_planner_builder_and_docs():
    """LayerSpec is generated from PARAMS, docs/networks.md documents every kind, and a new kind is
    one registered function: planning and building need no other change."""
    assert [f.name for f in dataclasses.fields(LayerSpec)] == ["type", *PARAMS]
    page = (Path(__file__).parents[1] / "docs" / "networks.md").read_text()
    for name in KINDS:
        assert f"`{name}`" in page, name

    @kind("gelu")
    def gelu(spec, shape, where):
        return [Layer("", "GELU", shape)]

    try:
        layers = [
            {"type": "flatten"},
            {"type": "linear", "out_features": 32},
            {"type": "gelu"},
            {"type": "linear", "out_features": 10},
        ]
        model = build(layers)
        assert isinstance(model.gelu2, torch.nn.GELU) and model(torch.rand(2, *IN_SHAPE)).shape == (2, 10)
    finally:
        del KINDS["gelu"]
