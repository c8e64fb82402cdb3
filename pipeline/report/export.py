"""Stage `export`: the trained model as a TensorFlow SavedModel, and its contract in
models/metadata.json.

The SavedModel (Keras `model.export`) needs neither Keras nor this project: its `serve`
signature maps float32 (N, S, S, 3) images, 0-255, to the (N, S, S, classes) softmax.
metadata.json says how to make those images and read those outputs (the input contract the
model was trained with), what the model is for and not for, where its training data came
from under which licences, its headline test figures with their 95 % intervals, the
new-images command's settings (so `stroke-seg` runs without params.yaml), and the sha256 of
every model file.

The SavedModel's bytes differ from one export to the next (TensorFlow writes the graph's
nodes in a different order), so their sha256 in metadata.json do too; its variables and its
predictions do not (tests/test_export.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.classes import BACKGROUND, lesion_classes
from pipeline.evaluate.headline import HEADLINE_FIGURES, figures_with_intervals
from pipeline.infer.dicom_seg import TRIAGE_METRIC, model_version
from pipeline.infer.inference import load_model
from pipeline.io import atomic_path, read_json_object, sha256_hex, write_json
from pipeline.params import Params
from pipeline.report.model_card import (
    INTENDED_USE,
    KAGGLE_LICENCES,
    NOT_A_DEVICE,
    NOT_INTENDED_FOR,
    PHANTOM_CAVEAT,
    PHANTOM_PROVENANCE,
    is_phantom,
    kaggle_provenance,
)
from pipeline.version import VERSION

METADATA_FORMAT = 1
SERVING_ENDPOINT = "serve"


def file_hashes(root: Path, paths: list[Path]) -> dict[str, str]:
    """sha256 of each file (a folder: each file under it), keyed by its path under `root`."""
    hashes: dict[str, str] = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            hashes[file.relative_to(root).as_posix()] = sha256_hex(file.read_bytes())
    return hashes


def command_settings(params: Params) -> dict[str, Any]:
    """What the new-images command reads from params.yaml in the project: the mask colours,
    the input rules (`extract`), the crop round the head (`head_crop`) and the inference
    settings (`infer`)."""
    return {
        "rgb_map": {name: list(colour) for name, colour in params.rgb_map.items()},
        "extract": params.extract.model_dump(mode="json"),
        "head_crop": params.head_crop.model_dump(mode="json"),
        "infer": params.infer.model_dump(mode="json"),
    }


def build_metadata(
    params: Params,
    version_of_model: str,
    input_size_px: int,
    evaluate_metrics: Mapping[str, Any],
    evaluate_metrics_path: Path,
    hashes: Mapping[str, str],
) -> dict[str, Any]:
    archive = params.extract.archive
    window = params.extract.window_16bit
    phantom = is_phantom(archive)
    return {
        "format": METADATA_FORMAT,
        "name": "stroke-ct-segmentation",
        "version": VERSION,
        "model_version": version_of_model,  # as the DICOM SEG names the weights
        "architecture": "FlexUNet (2-D U-Net), one axial CT slice at a time",
        "intended_use": INTENDED_USE,
        "not_intended_for": NOT_INTENDED_FOR,
        "medical_device": NOT_A_DEVICE,
        "input": {
            "tensor": {
                "shape": [None, input_size_px, input_size_px, 3],
                "dtype": "float32",
                "value_range": [0.0, 255.0],
                "endpoint": SERVING_ENDPOINT,
            },
            "window": {
                "level_hu": params.infer.window_level_hu,
                "width_hu": params.infer.window_width_hu,
                "note": "HU from level - width/2 to level + width/2 map to 0-255 (DICOM input)",
                "stored_16bit": {"level": window.level, "width": window.width},
            },
            "channels": "the 8-bit grey slice repeated in all three channels",
            "resize": (
                f"to {input_size_px} x {input_size_px} px: area interpolation when shrinking, "
                "linear when enlarging"
            ),
        },
        "output": {
            "tensor": {
                "shape": [None, input_size_px, input_size_px, len(params.rgb_map)],
                "dtype": "float32",
                "activation": "softmax over the classes, in index order",
            },
            "mask": "argmax over the classes, resized to the slice's size with nearest",
            "classes": [
                {"index": 0, "label": BACKGROUND, "colour": list(params.rgb_map[BACKGROUND])},
                *(
                    {"index": lesion.index, "label": lesion.name, "colour": list(lesion.colour)}
                    for lesion in lesion_classes(params.rgb_map)
                ),
            ],
        },
        "training_data": {
            "archive": archive,
            "phantom": phantom,
            "provenance": (
                f"{PHANTOM_PROVENANCE} {PHANTOM_CAVEAT}" if phantom else kaggle_provenance(archive)
            ),
            "licences": (
                "The phantom needs none. " if phantom else ""
            ) + f"Real data in the Kaggle layout: {KAGGLE_LICENCES}",
        },
        "evaluation": {
            "source": evaluate_metrics_path.as_posix(),
            "split": "test (patients held out from training and validation)",
            "intervals": "95 % bootstrap over test patients",
            "test_cases": evaluate_metrics.get("test_cases"),
            "figures": figures_with_intervals(evaluate_metrics, HEADLINE_FIGURES),
            TRIAGE_METRIC: evaluate_metrics.get(TRIAGE_METRIC),
        },
        "settings": command_settings(params),
        "files_sha256": dict(hashes),
    }


def export_model(
    params: Params,
    model_path: Path,
    evaluate_metrics_path: Path,
    saved_model_dir: Path,
    metadata_path: Path,
) -> dict[str, Any]:
    """Write the SavedModel (atomically, as a folder) and then metadata.json beside it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    evaluate_metrics = read_json_object(evaluate_metrics_path, "did the evaluate stage run?")
    # Dropout layers hold seed-generator variables, drawn when the model is built: seeded
    # here, they hold the same values in every export.
    keras.utils.set_random_seed(params.seed)
    model = load_model(model_path)
    with atomic_path(saved_model_dir) as folder:
        model.export(str(folder), format="tf_saved_model", verbose=False)
    root = metadata_path.parent
    hashes = file_hashes(root, [model_path, saved_model_dir])
    metadata = build_metadata(
        params,
        model_version(model_path),
        int(model.input_shape[1]),
        evaluate_metrics,
        evaluate_metrics_path,
        hashes,
    )
    write_json(metadata_path, metadata)
    return metadata
