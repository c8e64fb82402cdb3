"""The lesion classes: their names, metric labels, class indices and colours, in one place.

params.yaml's `rgb_map` is the class list: `background` first (class index 0), then one key
per lesion class in class-index order (1, 2, ...), each with its mask colour. Every other
module asks this one:
- `name`: the rgb_map key, spelt as manifests' `class` column and the archive's folders spell
  it (`Hemorrhagic`);
- `label`: the name in lower case, as metric keys spell it (`dice_hemorrhagic`);
- `index`: the class's value in class-index masks and its channel in the model's softmax;
- `colour`: its rgb_map colour, the exact colour of its pixels in mask files;
- `display_colour`: its colour in charts and montages, fixed here by class index, so that a
  mask-colour change in rgb_map redraws no chart and regenerates no phantom.

Adding a class is a params-only change for the model (one more output per rgb_map key; see
CONTRIBUTING.md). The data sources are not: the Kaggle archive and the phantom that imitates
it hold exactly the SOURCE_CLASSES, and what is specific to one of them (its case-id format,
its DICOM code, which class `augment` distorts) stays keyed by its name in the module that
needs it.

"The reference", named throughout the code, is the public project this pipeline started
from and improves on: a TensorFlow "FlexUNet" trained on 512x512 PNG slices of the Kaggle
"Real-Time Stroke Detection in MRI, CT, PET Images" data (Hemorrhagic red, Ischemic green),
with its INI config, its `dice_coef_multiclass` metric and its barrel-distortion
augmentation. Where code says "the reference's X", X is that project's choice, kept for
comparison or fixed for a stated reason (README, "The reference").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Rgb = tuple[int, int, int]

BACKGROUND = "background"  # rgb_map's first key: class index 0, no lesion
HEMORRHAGIC = "Hemorrhagic"
ISCHEMIC = "Ischemic"
# The lesion classes of the Kaggle archive and of the phantom, in their class-index order:
# what extract finds in the archive's folders and what the phantom draws.
SOURCE_CLASSES: tuple[str, ...] = (HEMORRHAGIC, ISCHEMIC)
# Chart and montage colours by lesion class index (1 first): matplotlib's tab10 red, green,
# then the rest of tab10 for any further class.
DISPLAY_COLOURS: tuple[str, ...] = (
    "#d62728",
    "#2ca02c",
    "#1f77b4",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)
OTHER_DISPLAY_COLOUR = "#7f7f7f"  # a class name the class list does not know (grey)
# A lesion class name must read well as a folder, a manifest value and (lower-cased) a
# metric-key part: letters only, capitalised.
NAME_PATTERN = r"^[A-Z][a-z]+$"


@dataclass(frozen=True)
class LesionClass:
    name: str  # rgb_map key and manifest `class` value, e.g. "Hemorrhagic"
    index: int  # class index in masks and model outputs (0 is background)
    colour: Rgb  # its colour in mask files (rgb_map)

    @property
    def label(self) -> str:
        """The name as metric keys spell it, e.g. "hemorrhagic"."""
        return metric_label(self.name)

    @property
    def display_colour(self) -> str:
        """Hex colour for charts and montages (fixed by index, independent of rgb_map)."""
        return display_colour(self.index)


def metric_label(name: str) -> str:
    """A class name as metric keys spell it: "Hemorrhagic" -> "hemorrhagic"."""
    return name.lower()


def lesion_classes(rgb_map: Mapping[str, Rgb]) -> tuple[LesionClass, ...]:
    """The lesion classes of `rgb_map` (every key after `background`), in class-index order."""
    return tuple(
        LesionClass(name, index, tuple(colour))
        for index, (name, colour) in enumerate(rgb_map.items())
        if index > 0
    )


def palette(rgb_map: Mapping[str, Rgb]) -> tuple[Rgb, ...]:
    """Mask colours by class index: 0 background, then the lesion classes."""
    return tuple(tuple(colour) for colour in rgb_map.values())


def class_labels(rgb_map: Mapping[str, Rgb]) -> tuple[str, ...]:
    """Metric labels by class index, background included: ("background", "hemorrhagic", ...)."""
    return (BACKGROUND, *(lesion.label for lesion in lesion_classes(rgb_map)))


def display_colour(index: int) -> str:
    """Chart colour of lesion class `index` (1, 2, ...)."""
    if not 1 <= index <= len(DISPLAY_COLOURS):
        return OTHER_DISPLAY_COLOUR
    return DISPLAY_COLOURS[index - 1]


def display_colour_of(name: str) -> str:
    """Chart colour of a source class by name; grey for a name outside SOURCE_CLASSES."""
    if name not in SOURCE_CLASSES:
        return OTHER_DISPLAY_COLOUR
    return display_colour(1 + SOURCE_CLASSES.index(name))


def display_rgb(index: int) -> Rgb:
    """`display_colour(index)` as an RGB triple, for pictures drawn with numpy."""
    hex_colour = display_colour(index).lstrip("#")
    return (int(hex_colour[0:2], 16), int(hex_colour[2:4], 16), int(hex_colour[4:6], 16))
