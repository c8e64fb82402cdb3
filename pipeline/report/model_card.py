"""What the model is for and where its training data comes from, in the words that both the
run report's model card (pipeline/report/page.py) and the exported model's metadata
(pipeline/report/export.py) use."""

from __future__ import annotations

from pathlib import Path

# Where stage `synthesize` writes the phantom (stages/synthesize.py, dvc.yaml): extract reading
# this archive means phantom data; any other archive is real data.
PHANTOM_ARCHIVE = Path("data/raw/phantom.zip")
PHANTOM_CAVEAT = (
    "Phantom numbers: the synthetic phantom is much easier than real CT. Published per-patient "
    "Dice on real non-contrast CT is about 0.6-0.7 for hemorrhage and 0.2-0.4 for early "
    "ischemia; do not read these figures as what the model would do on patients."
)
NOT_A_DEVICE = (
    "Research and education only. This is not a medical device: not for diagnosis, triage or "
    "any decision about a patient."
)
INTENDED_USE = (
    "Research and education: studying lesion segmentation on CT, teaching, and reproducing "
    "this pipeline."
)
NOT_INTENDED_FOR = (
    "Diagnosis, triage, treatment decisions or any clinical use. NOT a medical device; no "
    "regulator has reviewed it."
)
PHANTOM_PROVENANCE = (
    "A synthetic non-contrast head CT phantom written by this pipeline's synthesize stage. "
    "No patient data."
)
KAGGLE_LICENCES = (
    "Its CT part appears to derive from PhysioNet's CT-ICH dataset (Computed Tomography Images "
    "for Intracranial Hemorrhage Detection and Segmentation; CC BY 4.0) and from AISD, the "
    "Acute Ischemic Stroke Dataset (non-commercial licence). Check and honour both licences, "
    "and cite them; commercial use of the ischemic part is not allowed."
)


def is_phantom(archive: str | Path) -> bool:
    return Path(archive) == PHANTOM_ARCHIVE


def kaggle_provenance(archive: str | Path) -> str:
    return (
        f"The archive {archive}, laid out like the Kaggle dataset 'Real-Time Stroke Detection "
        f"in MRI, CT, PET Images'. {KAGGLE_LICENCES}"
    )
