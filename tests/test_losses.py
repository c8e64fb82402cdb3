"""Losses on small hand-computed cases, edge cases and invariants."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.model.losses import (
    LOSS_NAMES,
    SMOOTH,
    TVERSKY_ALPHA,
    TVERSKY_BETA,
    ClassWeightedLoss,
    make_loss,
)
from pipeline.model.training import cross_entropy_class_weights
from pipeline.params import parse_params
from tests.conftest import project_params_document


def one_hot(labels: np.ndarray, classes: int = 3) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def value(tensor) -> float:
    return float(keras.ops.convert_to_numpy(tensor))


def lesion_case() -> tuple[np.ndarray, np.ndarray]:
    """A 1x4x4 slice with a 4-pixel hemorrhage; the prediction hits 2 of them, adds 2 more."""
    truth = np.zeros((1, 4, 4), np.int64)
    truth[0, 0, :4] = 1
    prediction = np.zeros((1, 4, 4), np.int64)
    prediction[0, 0, 2:4] = 1
    prediction[0, 1, 0:2] = 1
    return truth, prediction


def test_categorical_crossentropy_of_one_pixel() -> None:
    truth = one_hot(np.array([[[0]]]))
    prediction = np.array([[[[0.5, 0.25, 0.25]]]], np.float32)
    assert value(make_loss("categorical_crossentropy")(truth, prediction)) == pytest.approx(
        math.log(2), rel=1e-5
    )


def test_focal_loss_down_weights_by_one_minus_p_squared() -> None:
    truth = one_hot(np.array([[[0, 1]]]))
    prediction = np.array([[[[0.5, 0.25, 0.25], [0.1, 0.9, 0.0]]]], np.float32)
    expected = (0.5**2 * math.log(2) + 0.1**2 * -math.log(0.9)) / 2
    assert value(make_loss("focal")(truth, prediction)) == pytest.approx(expected, rel=1e-4)


def test_soft_dice_and_tversky_on_a_hand_computed_batch() -> None:
    truth_labels, predicted_labels = lesion_case()
    truth, prediction = one_hot(truth_labels), one_hot(predicted_labels)
    # Hemorrhagic: TP 2, FP 2, FN 2. Ischemic: empty in both, so (0 + s) / (0 + s) = 1.
    hemorrhagic_dice = (2 * 2 + SMOOTH) / (2 * 2 + 2 + 2 + SMOOTH)
    assert value(make_loss("dice")(truth, prediction)) == pytest.approx(
        1 - (hemorrhagic_dice + 1) / 2, rel=1e-5
    )
    tversky = (2 + SMOOTH) / (2 + TVERSKY_ALPHA * 2 + TVERSKY_BETA * 2 + SMOOTH)
    assert value(make_loss("tversky")(truth, prediction)) == pytest.approx(
        1 - (tversky + 1) / 2, rel=1e-5
    )
    combined = value(make_loss("dice")(truth, prediction)) + value(
        make_loss("categorical_crossentropy")(truth, prediction)
    )
    assert value(make_loss("dice_ce")(truth, prediction)) == pytest.approx(combined, rel=1e-5)


def test_region_losses_are_zero_for_a_perfect_prediction() -> None:
    truth_labels, _ = lesion_case()
    truth = one_hot(truth_labels)
    for name in ("dice", "tversky", "dice_ce"):
        assert value(make_loss(name)(truth, truth)) == pytest.approx(0.0, abs=1e-5)


def test_unknown_loss_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="dice_ce"):
        make_loss("dce")
    # Weighted, and rebuilt from a saved model's config: the same message, not a KeyError.
    with pytest.raises(ValueError, match="dice_ce"):
        make_loss("dce", (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="dice_ce"):
        ClassWeightedLoss.from_config({"loss": "dce", "class_weights": None})


@settings(max_examples=20, deadline=None)
@given(
    labels=arrays(np.int64, (2, 3, 3), elements=st.integers(0, 2)),
    logits=arrays(np.float32, (2, 3, 3, 3), elements=st.floats(-5, 5, width=32)),
)
def test_every_loss_is_finite_and_non_negative(labels: np.ndarray, logits: np.ndarray) -> None:
    probabilities = np.asarray(keras.ops.softmax(logits, axis=-1))
    for name in LOSS_NAMES:
        loss = value(make_loss(name)(one_hot(labels), probabilities))
        assert math.isfinite(loss) and loss >= -1e-6, name


# ------------------------------------------------------------ cross-entropy class weights
def test_class_weights_scale_each_class_pixels_cross_entropy() -> None:
    # One pixel per class: the weighted mean over pixels of -w_c log p_c, by hand.
    truth = one_hot(np.array([[[0, 1, 2]]]))
    prediction = np.array([[[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]]], np.float32)
    weights = (1.0, 2.0, 3.0)
    expected = -(math.log(0.5) + 2 * math.log(0.6) + 3 * math.log(0.8)) / 3
    loss = make_loss("categorical_crossentropy", weights)
    assert value(loss(truth, prediction)) == pytest.approx(expected, rel=1e-5)
    dice_part = value(make_loss("dice")(truth, prediction))
    weighted_dice_ce = value(make_loss("dice_ce", weights)(truth, prediction))
    assert weighted_dice_ce == pytest.approx(dice_part + expected, rel=1e-5)
    focal_weight = [(1 - 0.5) ** 2, (1 - 0.6) ** 2, (1 - 0.8) ** 2]
    focal_expected = (
        -sum(
            w * f * math.log(p)
            for w, f, p in zip(weights, focal_weight, (0.5, 0.6, 0.8), strict=True)
        )
        / 3
    )
    assert value(make_loss("focal", weights)(truth, prediction)) == pytest.approx(
        focal_expected, rel=1e-5
    )


@settings(max_examples=20, deadline=None)
@given(
    labels=arrays(np.int64, (2, 3, 3), elements=st.integers(0, 2)),
    logits=arrays(np.float32, (2, 3, 3, 3), elements=st.floats(-5, 5, width=32)),
)
def test_weights_of_one_are_the_plain_loss_to_the_bit(
    labels: np.ndarray, logits: np.ndarray
) -> None:
    probabilities = np.asarray(keras.ops.softmax(logits, axis=-1))
    for name in LOSS_NAMES:
        plain = value(make_loss(name)(one_hot(labels), probabilities))
        weighted = value(make_loss(name, (1.0, 1.0, 1.0))(one_hot(labels), probabilities))
        assert weighted == plain, name


def test_a_region_loss_refuses_weights_it_would_ignore() -> None:
    for name in ("dice", "tversky"):
        with pytest.raises(ValueError, match="no cross-entropy term"):
            make_loss(name, (1.0, 1.0, 3.0))


def test_a_weighted_loss_is_saved_with_its_weights() -> None:
    loss = make_loss("dice_ce", (1.0, 1.0, 3.0))
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, ClassWeightedLoss)
    assert (again.loss, again.class_weights) == ("dice_ce", [1.0, 1.0, 3.0])


def _fit_weights(loss) -> list[np.ndarray]:
    """A tiny softmax model after three steps of plain Adam on fixed data."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    labels = one_hot(rng.integers(0, 3, (4, 8, 8)))
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(3, 3, padding="same", activation="softmax")]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    model.fit(images, labels, batch_size=2, epochs=1, shuffle=False, verbose=0)
    return model.get_weights()


def test_training_with_weights_of_one_is_training_without_them() -> None:
    # The default params weigh every class 1: the default model must not move by a bit.
    plain = _fit_weights(make_loss("dice_ce"))
    weighted = _fit_weights(make_loss("dice_ce", (1.0, 1.0, 1.0)))
    assert all(np.array_equal(a, b) for a, b in zip(plain, weighted, strict=True))
    heavier = _fit_weights(make_loss("dice_ce", (1.0, 1.0, 3.0)))
    assert not all(np.array_equal(a, b) for a, b in zip(plain, heavier, strict=True))


def test_the_params_weights_reach_the_loss_in_class_index_order() -> None:
    document = project_params_document()
    # Written in another order than rgb_map's: the loss must still get them by class index.
    document["train"]["cross_entropy_class_weights"] = {
        "Ischemic": 3.0,
        "Hemorrhagic": 2.0,
        "background": 0.5,
    }
    assert cross_entropy_class_weights(parse_params(document)) == (0.5, 2.0, 3.0)
