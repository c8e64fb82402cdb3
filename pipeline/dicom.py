"""DICOM CT series in: a reader that turns a folder or zip of DICOM files into checked CT
series in Hounsfield units (the new-images command, pipeline/infer/dicom_seg.py), and the project's
name-based UIDs (`derived_uid`). The phantom's own series are written by
pipeline/synthesize/dicom_series.py.

Files are grouped by SeriesInstanceUID (which must be a DICOM UID: it names the output
folder) and each series is checked before its pixels are decoded; a series that cannot be
read right is refused with one sentence that says why (`SeriesRefusal`), and the other series
still go on. Within a series, instances are identified by SOPInstanceUID (a second copy is set
aside), and localizers and other non-CT instances are set aside; DICOMDIR indexes and
operating-system metadata are ignored (`IgnoredFile`). Slices are ordered by their
ImagePositionPatient projected on the slice normal (ImageOrientationPatient's row x column),
never by file name. Stored values become HU through the rescale, pixel padding becomes air.

Memory holds one series: headers without large values, and one float32 HU volume filled
slice by slice (`read_ct_series`).
"""

from __future__ import annotations

import math
import re
import uuid
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEGExtended12Bit,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
)

from pipeline.io import DataError
from pipeline.zip_directory import read_central_directory

# Direction cosines: each row and column direction has unit length, the two are at right angles
# (|dot| below this), and two slices share an orientation when their cosines agree this
# closely. Scanners write them with 5 or 6 decimals (rounding errors near 1e-5). The SEG writer
# (highdicom) compares orientations exactly, so it is given the first slice's for all.
ORIENTATION_TOLERANCE = 1e-4
# Slice gaps may differ from their median by this share (or POSITION_TOLERANCE_MM, if larger):
# positions are written as decimal strings, rounded to a few digits.
GAP_TOLERANCE = 0.01
POSITION_TOLERANCE_MM = 0.05
# A UID as PS3.5 9.1 defines it: components of digits without leading zeros, joined by dots,
# at most 64 characters. A series' UID names its output folder, so nothing else may pass.
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_UID_CHARS = 64
# Characters of a refused value quoted in a message (a hostile header may hold anything).
QUOTED_CHARS = 80
# What padding pixels (PixelPaddingValue) become before windowing: air, black in any brain
# window, as outside the head in the training slices. Their labels are background.
PADDING_HU = -1000.0
# SOP classes of CT slices. Enhanced CT is multi-frame and refused as such by the header checks;
# any other class in a series (a secondary capture, a dose report, ...) is set aside.
CT_IMAGE_CLASSES = frozenset(
    {CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}
)
# Files that operating systems and archivers leave beside the data, by name (lower case).
OS_METADATA_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
# pydicom's decoder plugins that read JPEG of more than 8 bits (Pillow reads 8-bit JPEG only).
HIGH_BIT_JPEG_PLUGINS = frozenset({"pylibjpeg", "gdcm"})
# Header values longer than this are not read (a CT header's longest are a few hundred bytes;
# a private element of 50 MB in each of a series' files once took 2.2 GB when kept).
HEADER_VALUE_MAX_BYTES = 64 * 1024
# What one file's header costs in memory (about 35 KB once private elements are dropped), in
# float32 pixels: infer.max_series_pixels / HEADER_PIXELS bounds a series' files, checked before
# its headers are read (so a zip of 100,000 one-pixel slices cannot hold 100,000 headers).
HEADER_PIXELS = 8192
# HU are computed this many rows at a time (a float64 scratch of 2 MB for 512 columns).
HU_ROWS_PER_STEP = 512
# Namespace of this project's name-based UIDs (uuid5 of the project's name in the URL space).
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "stroke-ct-lesion-segmentation")


def derived_uid(*parts: object) -> str:
    """A UID in the 2.25 (UUID) form from a name-based UUID (version 5) of `parts`: the same
    parts give the same UID on every run. (pydicom's generate_uid ignores its entropy
    sources when it makes a 2.25 UID, and returns a random one.)"""
    name = "/".join(map(str, parts))
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}"


def uid_problem(value: object, keyword: str) -> str:
    """'' when `value` is a valid DICOM UID; else why not, quoting at most QUOTED_CHARS of it."""
    text = str(value) if isinstance(value, str) else repr(value)
    if len(text) <= MAX_UID_CHARS and UID_PATTERN.fullmatch(text):
        return ""
    shown = repr(text[:QUOTED_CHARS]) + ("..." if len(text) > QUOTED_CHARS else "")
    return (
        f"{keyword} {shown} is not a DICOM UID (digits and dots, at most {MAX_UID_CHARS} "
        "characters)"
    )


# --------------------------------------------------------------------------- reading series


@dataclass(frozen=True)
class DicomSource:
    """One input file: a path, or a member of a zip (`archive.zip!member`), opened for
    reading (a seekable binary file) by `open`."""

    name: str
    size_bytes: int
    open: Callable[[], BinaryIO]


@dataclass(frozen=True)
class IgnoredFile:
    """A file that is no part of any series and not an error: a DICOMDIR index (the files
    it lists are read directly) or what operating systems and archivers leave beside data."""

    name: str
    reason: str


@dataclass(frozen=True)
class SeriesRefusal:
    """A series (or a file that belongs to none) that is not segmented, and why."""

    series: str  # SeriesInstanceUID, or the file's name when it has none or is not DICOM
    reason: str
    files: int = 1


@dataclass
class CtSeries:
    """A checked CT series, slices ordered along the slice normal (inferior to superior for
    axial head CT). `hu` is (slices, rows, columns) float32 Hounsfield units."""

    series_instance_uid: str
    datasets: list[Dataset]
    sources: list[str]
    hu: np.ndarray
    pixel_spacing_mm: tuple[float, float]  # between rows, between columns
    slice_spacing_mm: float
    positions_mm: np.ndarray  # each slice's position along the normal
    # Where a slice holds PixelPaddingValue (bool, like `hu`), or None when no slice does;
    # its HU are PADDING_HU there.
    padding: np.ndarray | None = None
    # Files of the series not segmented, and why (a second copy of an instance, ...).
    set_aside: list[tuple[str, str]] = field(default_factory=list)

    @property
    def padding_pixels(self) -> int:
        return 0 if self.padding is None else int(np.count_nonzero(self.padding))

    @property
    def voxel_volume_ml(self) -> float:
        row_mm, column_mm = self.pixel_spacing_mm
        return row_mm * column_mm * self.slice_spacing_mm / 1000.0


def _open_file(path: Path) -> Callable[[], BinaryIO]:
    return lambda: path.open("rb")


def _open_member(archive: zipfile.ZipFile, member: str) -> Callable[[], BinaryIO]:
    return lambda: archive.open(member)


def os_metadata_reason(name: str) -> str:
    """Why a file named `name` (a path inside an input) is operating-system metadata, or ''."""
    parts = re.split(r"[/\\]", name)
    if "__MACOSX" in parts:
        return "macOS archive metadata (__MACOSX)"
    if parts[-1].startswith("._"):
        return "macOS resource fork (._ file)"
    if parts[-1].lower() in OS_METADATA_NAMES:
        return "operating system metadata"
    return ""


def _folder_files(folder: Path, max_entries: int | None) -> list[Path]:
    """A folder's files, recursively and sorted; DataError past `max_entries` files and
    folders (counted as they are found, before the sort holds them all)."""
    files = []
    for count, path in enumerate(folder.rglob("*"), start=1):
        if max_entries is not None and count > max_entries:
            raise DataError(
                f"more than extract.max_entries = {max_entries:,} files and folders; not read"
            )
        if path.is_file():
            files.append(path)
    return sorted(files)


def dicom_sources(
    inputs: Sequence[Path | str],
    refusals: list[SeriesRefusal],
    max_entries: int | None,
    open_archives: ExitStack,
    ignored: list[IgnoredFile],
) -> list[DicomSource]:
    """Every file of the inputs: folders (recursively, sorted), zips (every member) and
    single files. A missing input, a broken zip, or a zip or folder of more than
    `max_entries` entries is added to `refusals`; operating-system metadata files
    (`os_metadata_reason`) to `ignored`. Each zip is opened once, in
    `open_archives`, and its members are read from it (reopening it for each member would
    parse its whole directory each time)."""
    sources: list[DicomSource] = []
    for item in map(Path, inputs):
        if item.is_dir():
            try:
                files = _folder_files(item, max_entries)
            except DataError as error:
                refusals.append(SeriesRefusal(str(item), str(error)))
                continue
            for path in files:
                reason = os_metadata_reason(str(path.relative_to(item)))
                if reason:
                    ignored.append(IgnoredFile(str(path), reason))
                    continue
                sources.append(DicomSource(str(path), path.stat().st_size, _open_file(path)))
        elif item.is_file() and zipfile.is_zipfile(item):
            try:
                if max_entries is not None:
                    read_central_directory(item, max_entries)
                archive = open_archives.enter_context(zipfile.ZipFile(item))
            except DataError as error:
                refusals.append(SeriesRefusal(str(item), str(error).removeprefix(f"{item}: ")))
                continue
            except (zipfile.BadZipFile, OSError) as error:
                refusals.append(SeriesRefusal(str(item), f"not a readable zip ({error})"))
                continue
            members = [info for info in archive.infolist() if not info.is_dir()]
            for info in sorted(members, key=lambda info: info.filename):
                reason = os_metadata_reason(info.filename)
                if reason:
                    ignored.append(IgnoredFile(f"{item}!{info.filename}", reason))
                    continue
                opener = _open_member(archive, info.filename)
                sources.append(DicomSource(f"{item}!{info.filename}", info.file_size, opener))
        elif item.is_file():
            sources.append(DicomSource(str(item), item.stat().st_size, _open_file(item)))
        else:
            refusals.append(SeriesRefusal(str(item), "no such file or folder"))
    return sources


def read_header(source: DicomSource) -> Dataset:
    """A file's header: every public element but the pixel data and values over
    HEADER_VALUE_MAX_BYTES, which are skipped unread (pydicom defers them) and dropped.
    Private elements are dropped too: nothing here reads them, and scanners write hundreds
    (most of the 90 KB pydicom takes for CT_small's header)."""
    with source.open() as file:
        ds = pydicom.dcmread(file, stop_before_pixels=True, defer_size=HEADER_VALUE_MAX_BYTES)
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        deferred = isinstance(element, RawDataElement) and element.value is None
        if deferred or tag.is_private:
            del ds[tag]
    return ds


def _numbers(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    """A multi-valued decimal attribute as floats; None when absent, empty or malformed."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        values = tuple(float(v) for v in (value if isinstance(value, Sequence) else [value]))
    except (TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _missing(headers: Sequence[tuple[DicomSource, Dataset]], keyword: str, size: int) -> str:
    lacking = [source.name for source, ds in headers if _numbers(ds, keyword) is None]
    if not lacking:
        return ""
    return f"{keyword} missing or malformed in {len(lacking)} of {len(headers)} files " + (
        f"(e.g. {lacking[0]})" if size else ""
    )


def _transfer_syntax_problem(ds: Dataset) -> str:
    """Why this file's pixel data cannot be decoded here, or ''."""
    meta = getattr(ds, "file_meta", None)
    syntax = UID(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)) if meta else None
    if syntax is None or not syntax.is_compressed:
        return ""
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except NotImplementedError:
        return f"pixel data in {syntax.name} ({syntax}), which pydicom cannot decode"
    if decoder.is_available:
        high_bit = syntax == JPEGExtended12Bit and int(ds.get("BitsStored", 8)) > 8
        if high_bit and not HIGH_BIT_JPEG_PLUGINS & set(decoder.available_plugins):
            return (
                f"pixel data in {syntax.name} ({syntax}) with {ds.BitsStored} bits, and no "
                "decoder for JPEG above 8 bits is installed (install pylibjpeg-libjpeg)"
            )
        return ""
    needs = f" (install one of: {'; '.join(decoder.missing_dependencies)})"
    return f"pixel data in {syntax.name} ({syntax}) and no decoder for it is installed{needs}"


def not_a_ct_slice(ds: Dataset) -> str:
    """Why an instance of a series is no CT slice to segment (a localizer, a secondary
    capture or another SOP class), or ''. ImageType's third value is LOCALIZER for a scout."""
    image_type = ds.get("ImageType") or []
    values = [image_type] if isinstance(image_type, str) else [str(v) for v in image_type]
    if "LOCALIZER" in (value.strip().upper() for value in values[2:]):
        return f"a localizer (ImageType {chr(92).join(values)})"
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if sop_class and sop_class not in CT_IMAGE_CLASSES:
        return f"a {sop_class.name} instance, not a CT slice"
    return ""


# Header values that two files of one SOPInstanceUID must share to be copies of one image
# (their pixels are compared when they are decoded).
INSTANCE_IDENTITY_KEYWORDS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
)


@dataclass
class Instance:
    """One SOP instance of a series: its first file and header, and the further files that
    hold the same SOPInstanceUID with the same header values (copies, until their pixels
    are compared)."""

    source: DicomSource
    header: Dataset
    copies: list[DicomSource] = field(default_factory=list)


def distinct_instances(headers: list[tuple[DicomSource, Dataset]]) -> list[Instance] | str:
    """The series' files grouped by SOPInstanceUID (the first file of each in file-name
    order leads), or why the series cannot be read: a missing or malformed SOPInstanceUID,
    or two files of one SOPInstanceUID whose headers differ (two different images)."""
    instances: dict[str, Instance] = {}
    for source, ds in headers:
        uid = ds.get("SOPInstanceUID", "")
        problem = uid_problem(uid, "SOPInstanceUID")
        if problem:
            return f"{problem} in {source.name}"
        known = instances.get(uid)
        if known is None:
            instances[uid] = Instance(source, ds)
            continue
        differing = [
            keyword
            for keyword in INSTANCE_IDENTITY_KEYWORDS
            if str(known.header.get(keyword)) != str(ds.get(keyword))
        ]
        if differing:
            return _shared_uid(uid, known.source, source, f"differ in {differing[0]}")
        known.copies.append(source)
    return list(instances.values())


def _shared_uid(uid: str, first: DicomSource, other: DicomSource, how: str) -> str:
    return (
        f"two different images share SOPInstanceUID {uid} ({first.name} and {other.name} "
        f"{how}); a SEG cannot reference either"
    )


def _modality_problem(modalities: Iterable[str]) -> str:
    found = sorted(set(modalities))
    if found != ["CT"]:
        shown = ", ".join(m or "(none)" for m in found)
        return f"modality {shown}, not CT"
    return ""


def _header_problem(
    headers: list[tuple[DicomSource, Dataset]],
    max_pixels: int | None,
    max_series_pixels: int | None,
) -> str:
    """The first reason this series cannot be segmented, from its headers alone; '' if none."""
    problem = _modality_problem(str(ds.get("Modality", "")) for _, ds in headers)
    if problem:
        return problem
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in headers):
        return "multi-frame images (Enhanced CT) are not supported; export single-frame slices"
    for keyword in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"):
        problem = _missing(headers, keyword, len(headers))
        if problem:
            return problem
    for keyword in ("RescaleIntercept", "RescaleSlope"):
        problem = _missing(headers, keyword, len(headers))
        if problem:
            return f"{problem}: Hounsfield units unknown"
    rescale_types = sorted({str(ds.get("RescaleType", "")).strip() for _, ds in headers} - {""})
    if rescale_types not in ([], ["HU"]):
        return f"RescaleType {', '.join(rescale_types)}, not HU: Hounsfield units unknown"
    if any("ModalityLUTSequence" in ds for _, ds in headers):
        return "a Modality LUT Sequence: only linear RescaleSlope/RescaleIntercept is supported"
    photometric = {str(ds.get("PhotometricInterpretation", "")) for _, ds in headers}
    samples = {int(ds.get("SamplesPerPixel", 1)) for _, ds in headers}
    if samples != {1} or not photometric <= {"MONOCHROME1", "MONOCHROME2"}:
        return f"not greyscale (PhotometricInterpretation {sorted(photometric)})"
    sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for _, ds in headers}
    if len(sizes) > 1:
        return f"slices of different sizes {sorted(sizes)}"
    ((rows, columns),) = sizes
    if max_pixels is not None and rows * columns > max_pixels:
        # Checked before any pixel is decoded, as for PNG input: a compressed file within the
        # byte cap can still declare a slice too large to hold.
        return (
            f"{columns}x{rows} px slices, above the limit of {max_pixels} px (extract.max_pixels)"
        )
    if max_series_pixels is not None and len(headers) * rows * columns > max_series_pixels:
        return (
            f"{len(headers)} slices of {columns}x{rows} px = {len(headers) * rows * columns:,} "
            f"px, above infer.max_series_pixels = {max_series_pixels:,}; not decoded"
        )
    orientations = np.array([_numbers(ds, "ImageOrientationPatient") for _, ds in headers])
    if orientations.shape[1] != 6:
        return "ImageOrientationPatient must hold 6 direction cosines"
    for (source, _), orientation in zip(headers, orientations, strict=True):
        problem = orientation_problem(orientation)
        if problem:
            return f"{problem} in {source.name}"
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        return (
            "mixed orientations (ImageOrientationPatient differs between slices by more than "
            f"{ORIENTATION_TOLERANCE:g})"
        )
    spacings = np.array([_numbers(ds, "PixelSpacing") for _, ds in headers])
    if spacings.shape[1] != 2 or (spacings <= 0).any():
        return f"PixelSpacing must be two positive numbers, got {spacings[0].tolist()}"
    if np.abs(spacings - spacings[0]).max() > 1e-6:
        return "PixelSpacing differs between slices"
    for source, ds in headers:
        problem = _transfer_syntax_problem(ds)
        if problem:
            return f"{problem} (e.g. {source.name})"
    return ""


def orientation_problem(orientation: Sequence[float]) -> str:
    """'' when ImageOrientationPatient holds two unit vectors at right angles (within
    ORIENTATION_TOLERANCE); else what is wrong."""
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    lengths = (float(np.linalg.norm(row)), float(np.linalg.norm(column)))
    dot = float(row @ column)
    if max(abs(length - 1.0) for length in lengths) > ORIENTATION_TOLERANCE:
        shown = ", ".join(f"{length:.6f}" for length in lengths)
        return f"ImageOrientationPatient direction cosines of length {shown}, not 1"
    if abs(dot) > ORIENTATION_TOLERANCE:
        return (
            f"ImageOrientationPatient row and column directions not at right angles (dot {dot:.6f})"
        )
    return ""


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the slice plane: row direction x column direction."""
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, column)
    return normal / np.linalg.norm(normal)


def order_along_normal(
    orientation: Sequence[float], positions_mm: Sequence[Sequence[float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Slice order (indices into `positions_mm`) and the sorted positions along the normal:
    each ImagePositionPatient projected on the normal of the (shared) orientation."""
    along = np.asarray(positions_mm, dtype=float) @ slice_normal(orientation)
    order = np.argsort(along, kind="stable")
    return order, along[order]


def spacing_problem(positions_mm: np.ndarray) -> str:
    """'' when the sorted positions are distinct and evenly spaced; else why not."""
    gaps = np.diff(positions_mm)
    if (gaps < POSITION_TOLERANCE_MM).any():
        return "two or more slices at the same position along the slice normal"
    median = float(np.median(gaps))
    tolerance = max(GAP_TOLERANCE * median, POSITION_TOLERANCE_MM)
    if np.abs(gaps - median).max() > tolerance:
        return (
            f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
            "(a missing slice, or a series that mixes reconstructions?)"
        )
    return ""


def _as_stored(value: object, ds: Dataset) -> int:
    """A padding value as the decoded pixels hold it: a signed image's value written as US
    (two's complement in BitsAllocated bits) becomes the negative number it stands for."""
    number = int(value)
    bits = int(ds.get("BitsAllocated", 16))
    if int(ds.get("PixelRepresentation", 0)) == 1 and number >= 1 << (bits - 1):
        number -= 1 << bits
    return number


def padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Where `stored` holds padding (PS3.3 C.7.5.1.1.2): PixelPaddingValue, or with
    PixelPaddingRangeLimit every value between the two, inclusive; None without padding."""
    if ds.get("PixelPaddingValue") is None:
        return None
    value = _as_stored(ds.PixelPaddingValue, ds)
    if ds.get("PixelPaddingRangeLimit") is None:
        return stored == value
    low, high = sorted((value, _as_stored(ds.PixelPaddingRangeLimit, ds)))
    return (stored >= low) & (stored <= high)


def _decode(source: DicomSource, shape: tuple[int, int]) -> np.ndarray | str:
    """A file's stored pixel values, read without the rest of its dataset; or why not."""
    try:
        with source.open() as file:
            stored = pydicom.pixels.pixel_array(file)
    except Exception as error:  # decoders raise many types for damaged pixel data
        return f"pixel data of {source.name} cannot be decoded ({error})"
    if stored.shape != shape:
        return f"pixel data of {source.name} is {stored.shape}, not the {shape} its header says"
    return stored


def _store_hu(stored: np.ndarray, header: Dataset, out: np.ndarray) -> np.ndarray | None:
    """HU of one slice into `out` (float32), padding as PADDING_HU; where the padding is."""
    slope = _numbers(header, "RescaleSlope")[0]
    intercept = _numbers(header, "RescaleIntercept")[0]
    for start in range(0, stored.shape[0], HU_ROWS_PER_STEP):
        rows = slice(start, start + HU_ROWS_PER_STEP)
        out[rows] = stored[rows].astype(np.float64) * slope + intercept
    padded = padding_mask(header, stored)
    if padded is not None:
        out[padded] = PADDING_HU
    return padded


def _load_series(
    uid: str,
    sources: list[DicomSource],
    max_pixels: int | None,
    max_series_pixels: int | None,
) -> CtSeries | SeriesRefusal:
    """One series, checked from its headers, then decoded slice by slice into one volume.

    The headers are read here, for this series alone (without large values); each slice's
    pixels are decoded, converted into the preallocated HU volume and released, so the
    series costs its volume and headers plus one slice's decoding."""
    files = len(sources)
    if max_series_pixels is not None and files > max_series_pixels // HEADER_PIXELS:
        return SeriesRefusal(
            uid,
            f"{files:,} files, more than infer.max_series_pixels / {HEADER_PIXELS:,} = "
            f"{max_series_pixels // HEADER_PIXELS:,} (a header costs about the memory of "
            f"{HEADER_PIXELS:,} pixels); not read",
            files,
        )
    headers, set_aside, modalities = [], [], []
    for source in sources:
        ds = read_header(source)
        reason = not_a_ct_slice(ds)
        if reason:
            set_aside.append((source.name, f"{reason}; set aside"))
            modalities.append(str(ds.get("Modality", "")))
        else:
            headers.append((source, ds))
    if not headers:
        problem = _modality_problem(modalities)  # an MR series is refused as MR
        if problem:
            return SeriesRefusal(uid, problem, files)
        name, reason = set_aside[0]
        return SeriesRefusal(uid, f"no CT slices among its files (e.g. {name}: {reason})", files)
    instances = distinct_instances(headers)
    if isinstance(instances, str):
        return SeriesRefusal(uid, instances, files)
    headers = [(instance.source, instance.header) for instance in instances]
    problem = _header_problem(headers, max_pixels, max_series_pixels)
    if problem:
        return SeriesRefusal(uid, problem, files)
    order, positions = order_along_normal(
        _numbers(headers[0][1], "ImageOrientationPatient"),
        [_numbers(ds, "ImagePositionPatient") for _, ds in headers],
    )
    first = headers[0][1]
    if len(headers) > 1:
        problem = spacing_problem(positions)
        if problem:
            return SeriesRefusal(uid, problem, files)
        slice_spacing = float(np.median(np.diff(positions)))
    else:
        thickness = _numbers(first, "SliceThickness")
        if thickness is None or thickness[0] <= 0:
            return SeriesRefusal(uid, "one slice without SliceThickness: its volume is unknown")
        slice_spacing = thickness[0]
    shape = (int(first.Rows), int(first.Columns))
    hu = np.empty((len(instances), *shape), np.float32)
    padding: np.ndarray | None = None
    for position, index in enumerate(order):
        instance = instances[index]
        stored = _decode(instance.source, shape)
        if isinstance(stored, str):
            return SeriesRefusal(uid, stored, files)
        for copy in instance.copies:
            copied = _decode(copy, shape)
            if isinstance(copied, str):
                return SeriesRefusal(uid, copied, files)
            if not np.array_equal(copied, stored):
                how = "hold different pixels"
                sop_uid = instance.header.SOPInstanceUID
                return SeriesRefusal(uid, _shared_uid(sop_uid, instance.source, copy, how), files)
            reason = f"a copy of {instance.source.name} (same SOPInstanceUID and pixels); dropped"
            set_aside.append((copy.name, reason))
        padded = _store_hu(stored, instance.header, hu[position])
        if padded is not None and padded.any():
            if padding is None:
                padding = np.zeros(hu.shape, bool)
            padding[position] = padded
    row_mm, column_mm = _numbers(first, "PixelSpacing")
    datasets = [instances[index].header for index in order]
    for ds in datasets:  # all within ORIENTATION_TOLERANCE of it: see there
        ds.ImageOrientationPatient = first.ImageOrientationPatient
    return CtSeries(
        series_instance_uid=uid,
        datasets=datasets,
        sources=[instances[index].source.name for index in order],
        hu=hu,
        pixel_spacing_mm=(row_mm, column_mm),
        slice_spacing_mm=slice_spacing,
        positions_mm=positions,
        padding=padding,
        set_aside=set_aside,
    )


def read_ct_series(
    inputs: Sequence[Path | str],
    max_file_bytes: int,
    max_pixels: int | None = None,
    max_entries: int | None = None,
    max_series_pixels: int | None = None,
) -> Iterator[CtSeries | SeriesRefusal | IgnoredFile]:
    """Each series of the inputs, checked and in HU, or the reason it is refused; files that
    are not DICOM, too large, or belong to no series come out as refusals of their own, and
    DICOMDIR indexes and operating-system metadata as IgnoredFile.
    Refused unread: files over `max_file_bytes` (infer.max_dicom_file_mb), slices over
    `max_pixels` (extract.max_pixels), series over `max_series_pixels`
    (infer.max_series_pixels), zips and folders of more than `max_entries` files
    (extract.max_entries); None sets no limit.

    A first pass reads each file's header (without pixels or large values) only to group the
    files by series, and keeps only the files' names; each series is then read in turn
    (`_load_series`), so memory holds one series. A caller that drops each series before
    asking for the next holds no more.
    """
    with ExitStack() as open_archives:  # the zips' members are read until the last series
        refusals: list[SeriesRefusal] = []
        ignored: list[IgnoredFile] = []
        groups: dict[str, list[DicomSource]] = defaultdict(list)
        for source in dicom_sources(inputs, refusals, max_entries, open_archives, ignored):
            if source.size_bytes > max_file_bytes:
                refusals.append(
                    SeriesRefusal(
                        source.name,
                        f"{source.size_bytes / 1e6:.1f} MB, above the limit of "
                        f"{max_file_bytes / 1e6:.1f} MB (infer.max_dicom_file_mb)",
                    )
                )
                continue
            try:
                ds = read_header(source)
            except InvalidDicomError:
                refusals.append(SeriesRefusal(source.name, "not a DICOM file"))
                continue
            except Exception as error:  # truncated or corrupt files raise many types
                refusals.append(SeriesRefusal(source.name, f"not a readable DICOM file ({error})"))
                continue
            meta = getattr(ds, "file_meta", None) or {}
            if meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
                reason = "a DICOMDIR index (the files it lists are read directly)"
                ignored.append(IgnoredFile(source.name, reason))
                continue
            value = ds.get("SeriesInstanceUID", "")
            if not value:
                refusals.append(
                    SeriesRefusal(source.name, "a DICOM file with no SeriesInstanceUID")
                )
                continue
            groups[str(value) if isinstance(value, str) else repr(value)].append(source)
            del ds
        yield from ignored
        yield from refusals
        for uid in sorted(groups):
            problem = uid_problem(uid, "SeriesInstanceUID")
            if problem:
                # Named by its first file: the UID itself may be a path or control characters.
                first = groups[uid][0].name
                yield SeriesRefusal(first, f"{problem}; not read", len(groups[uid]))
                continue
            try:
                yield _load_series(uid, groups[uid], max_pixels, max_series_pixels)
            except (ValueError, TypeError, AttributeError, KeyError) as error:
                # pydicom raises these for values it cannot convert (an empty Rows, a bad IS)
                yield SeriesRefusal(uid, f"malformed header ({error})", len(groups[uid]))
            except (OSError, InvalidDicomError) as error:  # a file changed since it was listed
                yield SeriesRefusal(uid, f"a file cannot be read again ({error})", len(groups[uid]))


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as file:
            return file.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_dicom_input(inputs: Sequence[Path | str]) -> bool:
    """Whether the new-images command should read these inputs as DICOM: a zip, or a file or
    a folder (searched recursively) holding a `.dcm` file or a file with the DICOM preamble."""
    for item in map(Path, inputs):
        if item.is_file() and (zipfile.is_zipfile(item) or _looks_like_dicom(item)):
            return True
        if item.is_dir() and any(_looks_like_dicom(p) for p in item.rglob("*") if p.is_file()):
            return True
    return False
