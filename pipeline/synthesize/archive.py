"""The zip archive: every case rendered to PNGs, the other modalities' placeholder files and
the geometry file, written with fixed timestamps so the bytes depend on content only."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.io import (
    SPACING_FILE,
    atomic_path,
    encode_png,
    spacing_json,
    window_to_uint8,
)
from pipeline.numerics import baseline_opencv
from pipeline.parallel import ordered_map
from pipeline.params import PhantomParams
from pipeline.synthesize.layout import ARCHIVE_ROOT, CT_DATA_ROOT, CaseSpec, plan_cases
from pipeline.synthesize.rendering import PhantomSlice, build_case, render_slice

OTHER_MODALITIES = ("MRI Images", "PET Images")
# Zip members carry this fixed timestamp so the archive bytes depend on content only.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class CaseFiles:
    """A rendered case: its archive members (PNG bytes) and lesion pixels per slice."""

    spec: CaseSpec
    members: tuple[tuple[str, bytes], ...]
    lesion_pixels: tuple[int, ...]


@dataclass(frozen=True)
class PhantomSummary:
    cases: int
    slices: int
    masks: int
    lesion_slices: int
    archive_bytes: int


def render_case_slices(spec: CaseSpec, params: PhantomParams) -> Iterator[PhantomSlice]:
    """Every slice of a case in order, in HU before windowing: the one source of the
    archive's PNGs and of the DICOM series (pipeline/dicom.py)."""
    case = build_case(spec, params)
    for index in range(len(spec.slice_stems)):
        yield render_slice(case, index)


def render_case_files(task: tuple[CaseSpec, PhantomParams]) -> CaseFiles:
    """Render every slice of a case to PNG bytes (image, and mask unless the case has
    none). Module-level so that worker processes can run it."""
    spec, params = task
    members: list[tuple[str, bytes]] = []
    lesion_pixels: list[int] = []
    slices = render_case_slices(spec, params)
    for stem, rendered in zip(spec.slice_stems, slices, strict=True):
        image = window_to_uint8(rendered.hu, params.window_level_hu, params.window_width_hu)
        members.append((spec.member("images", stem), encode_png(image)))
        if spec.has_mask:
            mask = np.where(rendered.lesion, np.uint8(255), np.uint8(0))
            members.append((spec.member("mask", stem), encode_png(mask)))
        lesion_pixels.append(int(np.count_nonzero(rendered.lesion)))
    return CaseFiles(spec, tuple(members), tuple(lesion_pixels))


@baseline_opencv()
def other_modality_members(params: PhantomParams, seed: int) -> list[tuple[str, bytes]]:
    """A few MRI and PET files (PNG, JPEG, text) that a CT pipeline must leave alone."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    members: list[tuple[str, bytes]] = []
    for modality in OTHER_MODALITIES:
        prefix = modality.split()[0].lower()
        for index in range(params.files_per_other_modality):
            kind = ("png", "jpg", "txt")[index % 3]
            name = f"{ARCHIVE_ROOT}/{modality}/{prefix}_{index + 1:03d}.{kind}"
            if kind == "txt":
                members.append((name, f"{modality} placeholder, not CT.\n".encode()))
                continue
            blob = cv2.GaussianBlur(rng.uniform(0.0, 255.0, (64, 64)).astype(np.float32), (0, 0), 6)
            picture = window_to_uint8(blob, float(blob.mean()), 4.0 * float(blob.std()) + 1e-3)
            if kind == "png":
                members.append((name, encode_png(picture)))
            else:
                ok, buffer = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 90])
                if not ok:
                    raise RuntimeError("OpenCV could not encode a JPEG")
                members.append((name, buffer.tobytes()))
    return members


def geometry_member(params: PhantomParams) -> tuple[str, bytes]:
    """The spacing file `extract` reads: the physical scale the phantom declares (its
    anatomy is drawn in pixels, a head about two thirds of the image wide)."""
    data = spacing_json(params.pixel_spacing_mm, params.slice_thickness_mm)
    return f"{CT_DATA_ROOT}/{SPACING_FILE}", data


def write_zip(path: Path | str, members: Sequence[tuple[str, bytes]]) -> None:
    """Deterministic zip, written atomically: members sorted by name, fixed timestamps,
    stored uncompressed (PNG and JPEG are compressed already)."""
    with atomic_path(path) as temporary, zipfile.ZipFile(temporary, "w") as archive:
        for name, data in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)


def synthesize_archive(
    path: Path | str, params: PhantomParams, seed: int
) -> tuple[PhantomSummary, list[CaseFiles]]:
    """Render every case (in parallel, one task per case) and write the archive."""
    cases = plan_cases(params, seed)
    rendered = ordered_map(
        render_case_files,
        [(spec, params) for spec in cases],
        workers=params.workers,
        description="synthesize",
        chunksize=1,
    )
    members = [member for files in rendered for member in files.members]
    members.append(geometry_member(params))
    write_zip(path, members + other_modality_members(params, seed))
    summary = PhantomSummary(
        cases=len(cases),
        slices=sum(len(files.lesion_pixels) for files in rendered),
        masks=sum(len(files.lesion_pixels) for files in rendered if files.spec.has_mask),
        lesion_slices=sum(1 for files in rendered for pixels in files.lesion_pixels if pixels),
        archive_bytes=Path(path).stat().st_size,
    )
    return summary, rendered
