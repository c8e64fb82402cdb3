"""The lesion classes come from rgb_map alone (pipeline/classes.py): adding one is a
params-only change for the model and the metrics, as CONTRIBUTING.md's checklist says."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import classes
from pipeline.evaluate.pooled import SegmentationEvaluation
from pipeline.masks import colour_to_index, index_to_colour
from pipeline.model.losses import make_loss
from pipeline.model.network import build_model
from pipeline.model.train_metrics import make_metrics
from pipeline.params import ParamsError, parse_params
from stages.evaluate import headline_keys
from tests.conftest import project_params, project_params_document

SIZE = 32
THREE_CLASSES = {
    "image_size": SIZE,
    "model": {"base_filters": 4, "num_layers": 3},
    "rgb_map": {
        "background": [0, 0, 0],
        "Hemorrhagic": [255, 0, 0],
        "Ischemic": [0, 255, 0],
        "Tumour": [0, 0, 255],
    },
    "train": {"cross_entropy_class_weights": {"Tumour": 1.0}},
}


def test_the_default_classes_keep_their_names_labels_indices_and_colours():
    lesions = project_params().lesion_classes
    assert [(c.name, c.label, c.index, c.colour) for c in lesions] == [
        ("Hemorrhagic", "hemorrhagic", 1, (255, 0, 0)),
        ("Ischemic", "ischemic", 2, (0, 255, 0)),
    ]
    assert tuple(c.name for c in lesions) == classes.SOURCE_CLASSES
    labels = classes.class_labels(project_params().rgb_map)
    assert labels == ("background", "hemorrhagic", "ischemic")
    # Charts use tab:red and tab:green whatever rgb_map says; an unknown class is grey.
    assert [c.display_colour for c in lesions] == ["#d62728", "#2ca02c"]
    assert classes.display_colour_of("Ischemic") == "#2ca02c"
    assert classes.display_colour_of("Other") == classes.OTHER_DISPLAY_COLOUR
    assert classes.display_rgb(1) == (214, 39, 40)


def test_a_third_class_in_rgb_map_builds_four_outputs_and_its_metric_keys():
    params = project_params(THREE_CLASSES)
    lesions = params.lesion_classes
    assert [(c.label, c.index) for c in lesions] == [
        ("hemorrhagic", 1),
        ("ischemic", 2),
        ("tumour", 3),
    ]
    # Palette: four distinct colours by class index; masks of every class round-trip.
    assert params.palette == ((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255))
    labels = np.tile(np.arange(4, dtype=np.uint8).repeat(SIZE // 4), (SIZE, 1))
    assert np.array_equal(
        colour_to_index(index_to_colour(labels, params.palette), params.palette), labels
    )

    model = build_model(params)
    assert model.output_shape == (None, SIZE, SIZE, 4)
    # The metrics fit reports, one Dice per lesion class.
    model.compile(optimizer="adam", loss=make_loss("dice_ce"), metrics=make_metrics(lesions))
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    one_hot = np.eye(4, dtype=np.float32)[np.stack([labels, labels[::-1]])]
    history = model.fit(images, one_hot, batch_size=2, epochs=1, verbose=0).history
    assert {"dice_hemorrhagic", "dice_ischemic", "dice_tumour", "dice_mean"} <= set(history)

    # The evaluation's pooled keys, its confusion cells and the stage's headline keys.
    evaluation = SegmentationEvaluation(2.0, classes.class_labels(params.rgb_map))
    softmax = np.asarray(model.predict(images[:1], verbose=0))[0]
    evaluation.add("slice", labels, softmax)
    metrics = evaluation.metrics()
    assert {"pooled_dice_tumour", "pooled_nsd_tumour", "pixels_true_tumour_pred_background"} <= set(
        metrics
    )
    assert "dice_tumour" in headline_keys(params) and "dice_ischemic" in headline_keys(params)


@pytest.mark.parametrize(
    ("rgb_map", "expected"),
    [
        (
            {"background": [0, 0, 0], "Ischemic": [0, 255, 0], "Hemorrhagic": [255, 0, 0]},
            "must start with",
        ),
        (
            {
                "background": [0, 0, 0],
                "Hemorrhagic": [255, 0, 0],
                "Ischemic": [0, 255, 0],
                "tumour_2": [0, 0, 255],
            },
            "lesion class names must match",
        ),
        (
            {
                "background": [0, 0, 0],
                "Hemorrhagic": [255, 0, 0],
                "Ischemic": [0, 255, 0],
                "Tumour": [255, 0, 0],
            },
            "colours must be distinct",
        ),
    ],
)
def test_rgb_map_refuses_what_would_renumber_or_misname_a_class(rgb_map, expected):
    with pytest.raises(ParamsError, match=expected):
        # rgb_map replaced whole (a -S override would merge it into the project's map)
        parse_params({**project_params_document(), "rgb_map": rgb_map})
