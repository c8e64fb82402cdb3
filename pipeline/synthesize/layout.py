"""The archive layout: which cases the phantom holds (class, id, subset, mask or not, slice
stems) and where each file goes, as in the Kaggle stroke archive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.classes import HEMORRHAGIC, ISCHEMIC, SOURCE_CLASSES
from pipeline.params import ISCHEMIC_ID_MAX_STEP, PhantomParams

ARCHIVE_ROOT = "NEW-DATASET/REAL-TIME STROKE DETECTION IN MRI, CT, PET IMAGES"
CT_DATA_ROOT = f"{ARCHIVE_ROOT}/CT Images/data"
# Class indices of the source classes; they also seed each case's generator (its entropy).
CLASS_INDEX: dict[str, int] = {name: index for index, name in enumerate(SOURCE_CLASSES, start=1)}
Subset = Literal["Training", "Testing"]


@dataclass(frozen=True)
class CaseSpec:
    """Where a case goes in the archive and the entropy its random anatomy is drawn from."""

    class_name: str  # one of classes.SOURCE_CLASSES
    case_id: str
    subset: Subset
    has_mask: bool
    slice_stems: tuple[str, ...]
    entropy: tuple[int, ...]

    def member(self, kind: Literal["images", "mask"], stem: str) -> str:
        """Archive member name of one slice's image or mask."""
        return f"{CT_DATA_ROOT}/{self.subset}/{self.class_name}/{kind}/{self.case_id}/{stem}.png"


def plan_cases(params: PhantomParams, seed: int) -> list[CaseSpec]:
    """Every case of the archive in a fixed order (Hemorrhagic, then Ischemic).

    Hemorrhagic ids count up from `first_hemorrhagic_case` (3 digits); ischemic ids grow by
    random steps from `first_ischemic_case` (7 digits). Per class the first cases are
    Training, the last `testing_cases_per_class` Testing; `hemorrhagic_cases_without_mask`
    Training hemorrhagic cases, drawn at random, get no mask folder (like the real archive).
    """
    plan_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    testing = params.testing_cases_per_class
    hemorrhagic_ids = [
        f"{params.first_hemorrhagic_case + ordinal:03d}"
        for ordinal in range(params.hemorrhagic_cases + testing)
    ]
    unmasked = set(
        plan_rng.choice(
            params.hemorrhagic_cases, size=params.hemorrhagic_cases_without_mask, replace=False
        ).tolist()
    )
    steps = plan_rng.integers(1_500, ISCHEMIC_ID_MAX_STEP, size=params.ischemic_cases + testing)
    steps[0] = 0
    ischemic_ids = [f"{params.first_ischemic_case + int(step):07d}" for step in np.cumsum(steps)]

    cases: list[CaseSpec] = []
    for class_name, ids, training in (
        (HEMORRHAGIC, hemorrhagic_ids, params.hemorrhagic_cases),
        (ISCHEMIC, ischemic_ids, params.ischemic_cases),
    ):
        for ordinal, case_id in enumerate(ids):
            first_stem = int(plan_rng.integers(1, 9))
            cases.append(
                CaseSpec(
                    class_name=class_name,
                    case_id=case_id,
                    subset="Training" if ordinal < training else "Testing",
                    has_mask=not (class_name == HEMORRHAGIC and ordinal in unmasked),
                    slice_stems=tuple(
                        f"{first_stem + index:03d}" for index in range(params.slices_per_case)
                    ),
                    entropy=(seed, CLASS_INDEX[class_name], ordinal),
                )
            )
    return cases
