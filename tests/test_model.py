"""FlexUNet builder: exact parity with the reference config, and the knobs doing what they say."""

from __future__ import annotations

import ast
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.model.network import (
    REFERENCE_CONFIG,
    UNetConfig,
    build_model,
    build_unet,
    head_bias,
    level_kernel,
)
from pipeline.params import ParamsError
from tests.conftest import project_params

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def layers_of(model: keras.Model, kind: type) -> list:
    return [layer for layer in model.layers if type(layer) is kind]


def test_reference_config_has_the_reference_parameter_count_and_layer_structure() -> None:
    model = build_unet(REFERENCE_CONFIG)
    assert model.count_params() == 124_996_883
    assert model.input_shape == (None, 512, 512, 3)
    assert model.output_shape == (None, 512, 512, 3)
    convs = layers_of(model, keras.layers.Conv2D)
    # 8 encoder levels and 7 decoder levels of two convs each, and the 1x1 head.
    assert len(convs) == 2 * 8 + 2 * 7 + 1
    assert len(layers_of(model, keras.layers.Conv2DTranspose)) == 7
    assert len(layers_of(model, keras.layers.MaxPooling2D)) == 7
    assert len(layers_of(model, keras.layers.Concatenate)) == 7
    assert len(layers_of(model, keras.layers.Dropout)) == 15
    assert not layers_of(model, keras.layers.BatchNormalization)
    assert not layers_of(model, keras.layers.Rescaling)
    encoder_kernels = [model.get_layer(f"encoder{i}_conv1").kernel_size for i in range(8)]
    assert encoder_kernels == [(k, k) for k in (9, 7, 5, 3, 3, 3, 3, 3)]
    assert [model.get_layer(f"encoder{i}_conv2").filters for i in range(8)] == [
        16 * 2**i for i in range(8)
    ]
    assert model.get_layer("decoder0_conv1").kernel_size == (9, 9)
    assert model.get_layer("encoder3_dropout").rate == pytest.approx(0.15)
    head = model.get_layer("head")
    assert head.kernel_size == (1, 1) and head.activation.__name__ == "softmax"


def test_level_kernel_shrinks_by_two_per_level_down_to_three() -> None:
    assert [level_kernel(9, level) for level in range(6)] == [9, 7, 5, 3, 3, 3]
    assert [level_kernel(3, level) for level in range(3)] == [3, 3, 3]
    assert level_kernel(1, 0) == 3


def test_default_params_build_the_configured_model() -> None:
    params = project_params(
        {"image_size": 32, "model": {"base_filters": 4, "num_layers": 3, "normalization": "batch"}}
    )
    model = build_model(params)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 32, 32, 3)
    assert layers_of(model, keras.layers.Rescaling)
    assert layers_of(model, keras.layers.BatchNormalization)
    assert model.get_layer("encoder2_conv1").filters == 16


def test_residual_blocks_add_a_projected_shortcut_per_block() -> None:
    config = UNetConfig(image_size=32, num_classes=3, base_filters=4, num_layers=3, residual=True)
    model = build_unet(config)
    assert len(layers_of(model, keras.layers.Add)) == 3 + 2
    plain = build_unet(UNetConfig(image_size=32, num_classes=3, base_filters=4, num_layers=3))
    assert model.count_params() > plain.count_params()


def test_instance_normalization_predicts_each_image_from_its_own_statistics() -> None:
    """Batch normalisation in training mode standardises by the batch's statistics, so an
    image's prediction depends on its neighbours; instance normalisation uses the image's own,
    one group per channel, in training and inference alike."""
    images = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)

    def alone_and_in_a_batch(normalization: str) -> tuple[keras.Model, np.ndarray, np.ndarray]:
        keras.utils.set_random_seed(0)
        config = UNetConfig(
            image_size=16,
            num_classes=3,
            base_filters=4,
            num_layers=2,
            dropout_rate=0.0,
            normalization=normalization,
        )
        model = build_unet(config)
        in_a_batch = np.asarray(model(images, training=True))[0]
        return model, np.asarray(model(images[:1], training=True))[0], in_a_batch

    model, alone, in_a_batch = alone_and_in_a_batch("instance")
    np.testing.assert_allclose(alone, in_a_batch, atol=1e-5)
    assert not layers_of(model, keras.layers.BatchNormalization)
    assert model.get_layer("encoder1_in2").groups == 8  # one group per channel
    model, alone, in_a_batch = alone_and_in_a_batch("batch")
    assert np.abs(alone - in_a_batch).max() > 1e-3
    assert isinstance(model.get_layer("encoder1_bn2"), keras.layers.BatchNormalization)
    plain = alone_and_in_a_batch("none")[0]
    assert not layers_of(plain, keras.layers.BatchNormalization)
    assert not layers_of(plain, keras.layers.GroupNormalization)


def test_inputs_above_the_working_size_run_the_unet_behind_a_strided_stem() -> None:
    config = UNetConfig(
        image_size=64, num_classes=3, base_filters=4, num_layers=3, max_working_size=32
    )
    assert config.stem_stride == 2
    model = build_unet(config)
    assert model.get_layer("encoder0_conv1").output.shape[1:3] == (32, 32)
    assert model.get_layer("refine_conv").output.shape[1:3] == (64, 64)
    assert model.output_shape == (None, 64, 64, 3)
    assert UNetConfig(image_size=512, num_classes=3, max_working_size=100).stem_stride == 8
    plain = build_unet(UNetConfig(image_size=32, num_classes=3, base_filters=4, num_layers=3))
    assert "stem" not in {layer.name for layer in plain.layers}


def test_image_size_must_survive_every_pooling() -> None:
    with pytest.raises(ValueError, match="must be divisible by"):
        build_unet(UNetConfig(image_size=36, num_classes=3, num_layers=4))


def test_mixed_precision_keeps_a_float32_softmax() -> None:
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_unet(UNetConfig(image_size=32, num_classes=3, base_filters=4, num_layers=3))
        assert model.get_layer("encoder0_conv1").compute_dtype == "float16"
        output = model(np.zeros((1, 32, 32, 3), np.float32))
        assert keras.backend.standardize_dtype(output.dtype) == "float32"
    finally:
        keras.config.set_dtype_policy("float32")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base_filters=st.integers(2, 6),
    base_kernels=st.sampled_from([1, 3, 5]),
    num_layers=st.integers(2, 4),
    dilation=st.integers(1, 2),
    normalization=st.sampled_from(["batch", "instance", "none"]),
    residual=st.booleans(),
    max_working_size=st.sampled_from([8, 16]),
)
def test_any_configuration_maps_images_to_per_pixel_probabilities(
    base_filters: int,
    base_kernels: int,
    num_layers: int,
    dilation: int,
    normalization: str,
    residual: bool,
    max_working_size: int,
) -> None:
    config = UNetConfig(
        image_size=16,
        num_classes=3,
        base_filters=base_filters,
        base_kernels=base_kernels,
        num_layers=num_layers,
        dilation=dilation,
        normalization=normalization,
        residual=residual,
        max_working_size=max_working_size,
    )
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    probabilities = np.asarray(build_unet(config)(images, training=False))
    assert probabilities.shape == (2, 16, 16, 3)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "module",
    ["pipeline/model/network.py", "pipeline/model/losses.py", "pipeline/model/train_metrics.py"],
)
def test_model_and_losses_use_keras_only_so_they_run_on_any_backend(module: str) -> None:
    tree = ast.parse((PROJECT_ROOT / module).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"tensorflow", "jax", "torch"}


def test_dropout_that_would_silence_the_deepest_level_is_refused() -> None:
    with pytest.raises(ParamsError, match="deepest level"):
        project_params({"model": {"dropout_rate": 0.3, "num_layers": 5}})


def test_the_head_starts_at_the_lesion_prior() -> None:
    config = UNetConfig(
        image_size=32, num_classes=3, base_filters=4, num_layers=3, head_foreground_prior=0.01
    )
    start = build_unet(config).predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0)
    # Whatever the features, the bias alone sets the odds: the head's weights start small.
    assert 0.002 < float(start[..., 1].mean()) < 0.05
    assert 0.002 < float(start[..., 2].mean()) < 0.05
    equal = build_unet(UNetConfig(image_size=32, num_classes=3, base_filters=4, num_layers=3))
    assert (
        float(equal.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0)[..., 1].mean()) > 0.1
    )
    np.testing.assert_allclose(np.exp(head_bias(3, 0.01)), [0.98, 0.01, 0.01], rtol=1e-6)
    with pytest.raises(ValueError, match="no probability for the background"):
        head_bias(5, 0.3)
