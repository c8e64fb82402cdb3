"""The zip archive: every case rendered to PNGs, the other modalities' placeholder files and
the geometry file, written with fixed timestamps so the bytes depend on content only."""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
from pipeline.parallel import bounded_ordered_map, worker_count
from pipeline.params import PhantomParams
from pipeline.synthesize.layout import ARCHIVE_ROOT, CT_DATA_ROOT, CaseSpec, plan_cases
from pipeline.synthesize.rendering import PhantomSlice, build_case, render_slice
from pipeline.synthesize.statistics import CaseStatistics, case_statistics

OTHER_MODALITIES = ("MRI Images", "PET Images")
# Zip members carry this fixed timestamp so the archive bytes depend on content only.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class CaseFiles:
    """A rendered case: its archive members (PNG bytes) and lesion pixels per slice, as a
    worker process hands them back."""

    spec: CaseSpec
    members: tuple[tuple[str, bytes], ...]
    lesion_pixels: tuple[int, ...]
    statistics: CaseStatistics


@dataclass(frozen=True)
class CaseSlices:
    """A case written to the archive: its spec, lesion pixels per slice and statistics."""

    spec: CaseSpec
    lesion_pixels: tuple[int, ...]
    statistics: CaseStatistics


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
    case = build_case(spec, params)
    slices = [render_slice(case, index) for index in range(len(spec.slice_stems))]
    for stem, rendered in zip(spec.slice_stems, slices, strict=True):
        image = window_to_uint8(rendered.hu, rendered.window_level_hu, rendered.window_width_hu)
        members.append((spec.member("images", stem), encode_png(image)))
        if spec.has_mask:
            mask = np.where(rendered.lesion, np.uint8(255), np.uint8(0))
            members.append((spec.member("mask", stem), encode_png(mask)))
        lesion_pixels.append(int(np.count_nonzero(rendered.lesion)))
    return CaseFiles(spec, tuple(members), tuple(lesion_pixels), case_statistics(case, slices))


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


class SortedZipWriter:
    """Writes an archive's members in name order whatever order they arrive in.

    A member whose turn has not come is parked in `spill` (a temporary file) until it has, so
    the writer holds one member at a time however large the archive. Every expected name must be
    added exactly once; `finish` says which are missing."""

    def __init__(self, archive: zipfile.ZipFile, names: Iterable[str], spill: BinaryIO) -> None:
        self._archive = archive
        self._order = sorted(names)
        self._expected = set(self._order)
        if len(self._expected) != len(self._order):
            raise ValueError("an archive member name is listed twice")
        self._next = 0
        self._spill = spill
        self._parked: dict[str, tuple[int, int]] = {}  # name -> (offset, size) in the spill file

    def add(self, name: str, data: bytes) -> None:
        if name not in self._expected:
            raise ValueError(f"{name}: not an expected archive member, or added twice")
        self._expected.remove(name)
        if name != self._order[self._next]:
            offset = self._spill.seek(0, io.SEEK_END)
            self._spill.write(data)
            self._parked[name] = (offset, len(data))
            return
        self._write(name, data)
        while self._next < len(self._order) and self._order[self._next] in self._parked:
            name = self._order[self._next]
            offset, size = self._parked.pop(name)
            self._spill.seek(offset)
            self._write(name, self._spill.read(size))

    def finish(self) -> None:
        if self._expected:
            missing = sorted(self._expected)
            raise RuntimeError(f"{len(missing)} archive members never added, first {missing[0]}")

    def _write(self, name: str, data: bytes) -> None:
        """Fixed timestamp and mode, stored uncompressed (PNG and JPEG are compressed already),
        so the bytes depend on content only."""
        info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        self._archive.writestr(info, data)
        self._next += 1


def member_names(spec: CaseSpec) -> list[str]:
    """The archive members of a case: an image per slice, and a mask unless it has none."""
    kinds = ("images", "mask") if spec.has_mask else ("images",)
    return [spec.member(kind, stem) for stem in spec.slice_stems for kind in kinds]


def synthesize_archive(
    path: Path | str, params: PhantomParams, seed: int
) -> tuple[PhantomSummary, list[CaseSlices]]:
    """Render every case (in parallel, one task per case) and write the archive atomically,
    each case's files as soon as they are rendered: memory stays flat in the number of cases.
    Returns the summary and the cases' lesion pixels per slice, in plan order."""
    cases = plan_cases(params, seed)
    fixed = [geometry_member(params), *other_modality_members(params, seed)]
    names = [name for spec in cases for name in member_names(spec)] + [n for n, _ in fixed]
    # Rendered in the order their files go in the archive, so that only the masks of the
    # current subset and class (after all its images, by name) wait in the spill file.
    render_order = sorted(cases, key=lambda spec: member_names(spec)[0])
    rendered_cases: dict[CaseSpec, CaseFiles] = {}
    with (
        atomic_path(path) as temporary,
        zipfile.ZipFile(temporary, "w") as archive,
        tempfile.TemporaryFile(dir=Path(path).parent) as spill,
    ):
        writer = SortedZipWriter(archive, names, spill)
        for name, data in fixed:
            writer.add(name, data)
        rendered = bounded_ordered_map(
            render_case_files,
            ((spec, params) for spec in render_order),
            workers=params.workers,
            window=2 * worker_count(params.workers),  # rendered cases wait here, in memory
            description="synthesize",
            total=len(render_order),
            unit="case",
        )
        with closing(rendered):  # an error while writing stops the rendering at once
            for files in rendered:
                for name, data in files.members:
                    writer.add(name, data)
                rendered_cases[files.spec] = CaseFiles(
                    files.spec, (), files.lesion_pixels, files.statistics
                )
        writer.finish()
    slices = [
        CaseSlices(spec, rendered_cases[spec].lesion_pixels, rendered_cases[spec].statistics)
        for spec in cases
    ]
    summary = PhantomSummary(
        cases=len(cases),
        slices=sum(len(case.lesion_pixels) for case in slices),
        masks=sum(len(case.lesion_pixels) for case in slices if case.spec.has_mask),
        lesion_slices=sum(1 for case in slices for pixels in case.lesion_pixels if pixels),
        archive_bytes=Path(path).stat().st_size,
    )
    return summary, slices
