"""Stage `extract`: CT slices and masks out of the Kaggle-layout archive (zip or folder).

The archive holds `.../CT Images/data/<Subset>/<Class>/<images|mask>/<case>/<slice>.png`
(next to MRI and PET folders that this project ignores). Extraction is four small steps:

1. list the archive's entries, refusing unsafe ones (absolute paths, `..`, links, special
   files, duplicate zip names) and checking the declared uncompressed size against a cap;
2. classify each entry into a `SliceFile` (subset, class, case, kind, stem) or a `Problem`;
3. pair images with masks by (subset, class, case, stem) - a pure function of the listing;
4. read each pair's two members, decode them in memory, threshold the mask, and write
   8-bit grey PNGs named by slice id into a temporary folder that replaces the output.

Entries are never extracted by their archive names (outputs are named by validated slice
ids), so no member can land outside the output folder; unsafe members are still refused
and reported. Every file the archive holds ends up either in a written pair or in exactly
one problem category of the report, never silently dropped.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.io import (
    SPACING_FILE,
    DataError,
    atomic_path,
    decode_image,
    encode_png,
    parse_spacing_json,
    write_hashed,
    write_json,
    write_manifest,
    write_text_atomic,
)
from pipeline.params import CLASS_NAMES, ClassName, ExtractParams

Kind = Literal["image", "mask"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Folder names are matched case-insensitively and written in their canonical spelling.
SUBSET_FOLDERS = {"training": "Training", "testing": "Testing"}
CLASS_FOLDERS = {name.lower(): name for name in CLASS_NAMES}
KIND_FOLDERS: dict[str, Kind] = {"images": "image", "mask": "mask", "masks": "mask"}
CT_ROOT_PARTS = ("ct images", "data")
# Slice ids are `<Class>_<case>_<stem>` for Training; Testing stems get this prefix so that
# a Testing slice never shares an id with a Training slice of the same case and stem.
SUBSET_STEM_PREFIX = {"Training": "", "Testing": "test-"}
# Case folders and file stems become parts of output file names: letters, digits and a few
# punctuation marks, never a path separator or a leading dot.
SAFE_NAME = re.compile(r"^\w[\w .()+-]*$")
MEGABYTE = 1024 * 1024

# Problem categories, in report order, with what each means.
PROBLEM_CATEGORIES: dict[str, str] = {
    "refused_members": "unsafe entries refused (could write outside the output folder)",
    "ignored_files": "outside the CT tree, in a subset not selected, or OS metadata",
    "non_image_files": "inside the CT tree but not PNG/JPEG",
    "misplaced_files": "images not at <Subset>/<Class>/<images|mask>/<case>/<slice>",
    "duplicate_files": "a second file for a slice already listed (kept the first by name)",
    "unpaired_images": "images without a mask",
    "unpaired_masks": "masks without an image",
    "unreadable_files": "files that could not be read or decoded (pair dropped)",
    "size_mismatches": "pairs whose image and mask sizes differ (pair dropped)",
    "dropped_partners": "readable files dropped with their pair (see the two lists above)",
}


@dataclass(frozen=True)
class Entry:
    """One file of the archive: its name (forward slashes) and why it is refused, if it is."""

    name: str
    refusal: str | None = None


@dataclass(frozen=True)
class Problem:
    category: str
    path: str
    reason: str


@dataclass(frozen=True)
class SliceFile:
    """An image or mask file at its expected place in the CT tree."""

    path: str
    subset: str
    class_name: ClassName
    case_id: str
    kind: Kind
    stem: str


@dataclass(frozen=True)
class SlicePair:
    id: str
    subset: str
    class_name: ClassName
    case_id: str
    image_path: str
    mask_path: str


@dataclass(frozen=True)
class Listing:
    ct_root: str
    slices: list[SliceFile]
    problems: list[Problem]


@dataclass(frozen=True)
class Pairing:
    pairs: list[SlicePair]
    problems: list[Problem]


@dataclass(frozen=True)
class ExtractResult:
    """What was written and everything that was not, for the metrics and the report."""

    archive: str
    ct_root: str
    entries: int
    matched_pairs: int
    rows: list[dict[str, object]]
    problems: list[Problem]
    geometry: str = ""


class Source(Protocol):
    def entries(self) -> list[Entry]: ...

    def read(self, name: str) -> bytes: ...


# ---------------------------------------------------------------- archive and folder sources


def unsafe_name_reason(name: str) -> str | None:
    """Why an archive member name could escape the output folder, or None if it cannot."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "parent-directory component '..'"
    return None


def zip_entry_refusal(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member is refused (unsafe name, link or special file), or None."""
    reason = unsafe_name_reason(info.filename)
    if reason:
        return reason
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        return "symbolic link"
    if file_type not in (0, stat.S_IFREG):
        return "not a regular file"
    return None


class ZipSource:
    """Reads a zip member by member; never unpacks the whole archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(f"{path}: not a readable zip archive ({error})") from None
        self.members: dict[str, zipfile.ZipInfo] = {}
        self.listed: list[Entry] = []
        for info in self.archive.infolist():
            if info.is_dir():
                continue
            refusal = zip_entry_refusal(info)
            if refusal is None and info.filename in self.members:
                refusal = "duplicate member name (an earlier member has it)"
            if refusal is None:
                self.members[info.filename] = info
            self.listed.append(Entry(info.filename, refusal))

    def close(self) -> None:
        self.archive.close()

    def declared_size(self) -> int:
        return sum(info.file_size for info in self.archive.infolist())

    def entries(self) -> list[Entry]:
        return list(self.listed)

    def read(self, name: str) -> bytes:
        info = self.members[name]
        if info.flag_bits & 0x1:
            raise DataError(f"{name}: encrypted member")
        try:
            with self.archive.open(info) as member:
                return member.read()
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as error:
            raise DataError(f"{name}: cannot read member ({error})") from None


class FolderSource:
    """Reads an unpacked archive; follows symbolic links only when they stay inside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = path.resolve()

    def close(self) -> None:
        """Nothing to release; present so both sources are used alike."""

    def entries(self) -> list[Entry]:
        try:
            return list(self._walk(self.root, "", {self.root}))
        except OSError as error:
            raise DataError(f"{self.path}: cannot list the folder ({error})") from None

    def _walk(self, folder: Path, prefix: str, visited: set[Path]) -> Iterator[Entry]:
        for item in sorted(os.scandir(folder), key=lambda entry: entry.name):
            name = f"{prefix}{item.name}"
            path = Path(item.path)
            if item.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(self.root):
                    yield Entry(name, f"symbolic link to {target}, outside the folder")
                    continue
                if not target.exists():
                    yield Entry(name, "broken symbolic link")
                    continue
                if target.is_dir():
                    if target in visited:
                        yield Entry(name, "symbolic link loop")
                        continue
                    yield from self._walk(target, f"{name}/", visited | {target})
                    continue
            if item.is_dir():
                yield from self._walk(path, f"{name}/", visited | {path.resolve()})
            elif item.is_file():
                yield Entry(name)
            else:
                yield Entry(name, "not a regular file")

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except OSError as error:
            raise DataError(f"{name}: cannot read ({error.strerror})") from None


def open_source(path: Path, max_uncompressed_mb: float) -> ZipSource | FolderSource:
    """The archive as a source; a zip declaring more than the cap is refused before reading."""
    if path.is_dir():
        return FolderSource(path)
    if not path.is_file():
        raise DataError(
            f"{path}: archive not found (extract.archive; run `dvc repro synthesize` for the "
            "phantom, or point it at the Kaggle zip or its unpacked folder)"
        )
    source = ZipSource(path)
    declared = source.declared_size()
    if declared > max_uncompressed_mb * MEGABYTE:
        source.close()
        raise DataError(
            f"{path}: declares {declared / MEGABYTE:.1f} MB uncompressed, over "
            f"extract.max_uncompressed_mb = {max_uncompressed_mb:g}; refused before writing "
            "anything (raise the cap if you trust this archive)"
        )
    return source


# ---------------------------------------------------------------- listing


def is_os_metadata(name: str) -> bool:
    """macOS resource forks and Finder/Explorer files that archivers add."""
    base = name.rsplit("/", 1)[-1]
    return (
        name.startswith("__MACOSX/")
        or base.startswith("._")
        or base in {".DS_Store", "Thumbs.db", "desktop.ini"}
    )


def find_ct_root(names: Iterable[str], archive: str) -> str:
    """Prefix (ending in '/') of the CT tree: the shallowest `.../CT Images/data/`.

    An unpacked `CT Images/data` folder given directly (its top level holds `Training` or
    `Testing`) has the empty prefix.
    """
    candidates: set[str] = set()
    top_level: set[str] = set()
    for name in names:
        if is_os_metadata(name):
            continue
        parts = name.split("/")
        top_level.add(parts[0])
        for index in range(len(parts) - 2):
            if (parts[index].lower(), parts[index + 1].lower()) == CT_ROOT_PARTS:
                candidates.add("/".join(parts[: index + 2]) + "/")
                break
    if candidates:
        return min(candidates, key=lambda prefix: (prefix.count("/"), prefix))
    if any(part.lower() in SUBSET_FOLDERS for part in top_level):
        return ""
    raise DataError(
        f"{archive}: no 'CT Images/data/' folder, nor Training/Testing at its top level, "
        f"which holds {sorted(top_level)[:10]}"
    )


def classify_entry(entry: Entry, ct_root: str, subsets: Sequence[str]) -> SliceFile | Problem:
    """Where one entry belongs: a slice file, or the problem category that explains it."""
    name = entry.name
    refusal = entry.refusal or unsafe_name_reason(name)
    if refusal:
        return Problem("refused_members", name, refusal)
    if is_os_metadata(name):
        return Problem("ignored_files", name, "operating-system metadata")
    if not name.startswith(ct_root):
        return Problem("ignored_files", name, f"outside the CT tree '{ct_root}'")
    parts = name[len(ct_root) :].split("/")
    subset = SUBSET_FOLDERS.get(parts[0].lower())
    if subset is not None and subset not in subsets:
        return Problem("ignored_files", name, f"subset {subset} not in extract.subsets")
    stem, extension = os.path.splitext(parts[-1])
    if extension.lower() not in IMAGE_EXTENSIONS:
        return Problem("non_image_files", name, f"not a PNG/JPEG file ('{extension}')")
    if len(parts) != 5:
        return Problem("misplaced_files", name, "not at <Subset>/<Class>/<kind>/<case>/<slice>")
    class_name = CLASS_FOLDERS.get(parts[1].lower())
    kind = KIND_FOLDERS.get(parts[2].lower())
    if subset is None or class_name is None or kind is None:
        return Problem(
            "misplaced_files",
            name,
            f"expected {'|'.join(SUBSET_FOLDERS.values())}/{'|'.join(CLASS_NAMES)}/"
            f"images|mask, got {'/'.join(parts[:3])}",
        )
    case_id = parts[3]
    for label, value in (("case folder", case_id), ("file name", stem)):
        if not SAFE_NAME.match(value):
            return Problem("misplaced_files", name, f"{label} '{value}' is not a plain name")
    return SliceFile(name, subset, class_name, case_id, kind, stem)


def classify_entries(entries: Sequence[Entry], subsets: Sequence[str], archive: str) -> Listing:
    """Split the archive's entries into slice files and problems, both sorted by path."""
    usable = [entry.name for entry in entries if not entry.refusal]
    ct_root = find_ct_root((name for name in usable if not unsafe_name_reason(name)), archive)
    slices: list[SliceFile] = []
    problems: list[Problem] = []
    for entry in sorted(entries, key=lambda item: item.name):
        outcome = classify_entry(entry, ct_root, subsets)
        (slices if isinstance(outcome, SliceFile) else problems).append(outcome)
    return Listing(ct_root, slices, problems)


# ---------------------------------------------------------------- pairing


def slice_id(class_name: str, case_id: str, subset: str, stem: str) -> str:
    return f"{class_name}_{case_id}_{SUBSET_STEM_PREFIX[subset]}{stem}"


def pair_slices(slices: Iterable[SliceFile], mask_suffix: str) -> Pairing:
    """Pair each image with the mask of the same subset, class, case and stem.

    A mask's stem is the image's stem plus `mask_suffix`. The result does not depend on the
    order of `slices`: duplicates keep the first path in sorted order; pairs sort by id.
    """
    problems: list[Problem] = []
    found: dict[tuple[Kind, str, str, str, str], str] = {}
    for item in sorted(slices, key=lambda s: s.path):
        stem = item.stem
        if item.kind == "mask" and mask_suffix:
            if not stem.endswith(mask_suffix) or stem == mask_suffix:
                problems.append(
                    Problem("unpaired_masks", item.path, f"name lacks the suffix '{mask_suffix}'")
                )
                continue
            stem = stem.removesuffix(mask_suffix)
        key = (item.kind, item.subset, item.class_name, item.case_id, stem)
        if key in found:
            problems.append(Problem("duplicate_files", item.path, f"same slice as {found[key]}"))
        else:
            found[key] = item.path
    pairs: list[SlicePair] = []
    for (kind, subset, class_name, case_id, stem), path in found.items():
        partner = found.get(
            ("mask" if kind == "image" else "image", subset, class_name, case_id, stem)
        )
        if partner is None:
            missing = "mask" if kind == "image" else "image"
            problems.append(
                Problem(f"unpaired_{kind}s", path, f"no {missing} for case {case_id} slice {stem}")
            )
        elif kind == "image":
            identifier = slice_id(class_name, case_id, subset, stem)
            pairs.append(SlicePair(identifier, subset, class_name, case_id, path, partner))
    pairs.sort(key=lambda pair: pair.id)
    unique: list[SlicePair] = []
    for pair in pairs:
        if unique and unique[-1].id == pair.id:
            for path in (pair.image_path, pair.mask_path):
                problems.append(Problem("duplicate_files", path, f"slice id {pair.id} taken"))
        else:
            unique.append(pair)
    return Pairing(unique, problems)


# ---------------------------------------------------------------- decoding and writing


def binarize_mask(values: np.ndarray) -> np.ndarray:
    """0/255 uint8 mask: 0/1 masks (max <= 1) keep their ones, others threshold at > 127.

    The threshold makes JPEG-compressed 0/255 masks exact again.
    """
    lesion = values > 0 if int(values.max(initial=0)) <= 1 else values > 127
    return lesion.astype(np.uint8) * 255


class PairError(Exception):
    """One pair cannot be used; carries the problems that say why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = problems


def load_pair(source: Source, pair: SlicePair) -> tuple[np.ndarray, np.ndarray]:
    """Grey image and 0/255 mask of a pair; PairError if unreadable or mismatched in size.

    A readable file whose partner is unusable is reported as a dropped partner, so that
    every file of the pair appears in the report.
    """
    decoded: dict[str, np.ndarray] = {}
    problems = []
    for path in (pair.image_path, pair.mask_path):
        try:
            # Masks decode in colour and keep their brightest channel: a colour mask's pure red
            # lesion would otherwise turn grey 76 and vanish under the threshold.
            is_mask = path == pair.mask_path
            pixels = decode_image(source.read(path), path, color=is_mask)
            decoded[path] = pixels.max(axis=2) if is_mask else pixels
        except DataError as error:
            problems.append(Problem("unreadable_files", path, f"{error}; dropped {pair.id}"))
    if problems:
        problems += [
            Problem("dropped_partners", path, f"its partner is unreadable; dropped {pair.id}")
            for path in decoded
        ]
        raise PairError(problems)
    image, mask = decoded[pair.image_path], decoded[pair.mask_path]
    if image.shape != mask.shape:
        reason = (
            f"image {image.shape[1]}x{image.shape[0]} but mask {pair.mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]}; dropped {pair.id}"
        )
        raise PairError(
            [
                Problem("size_mismatches", pair.image_path, reason),
                Problem("dropped_partners", pair.mask_path, f"size mismatch; dropped {pair.id}"),
            ]
        )
    return image, binarize_mask(mask)


def manifest_row(pair: SlicePair, image: np.ndarray, mask: np.ndarray) -> dict[str, object]:
    """The manifest row of a written pair (contract columns, then provenance)."""
    return {
        "id": pair.id,
        "case_id": pair.case_id,
        "class": pair.class_name,
        "source": "original",
        "source_id": pair.id,
        "image_path": f"images/{pair.id}.png",
        "mask_path": f"masks/{pair.id}.png",
        "width": image.shape[1],
        "height": image.shape[0],
        "lesion_pixels": int(np.count_nonzero(mask)),
        "subset": pair.subset,
        "archive_image": pair.image_path,
        "archive_mask": pair.mask_path,
    }


def write_pairs(
    source: Source, pairs: Sequence[SlicePair], folder: Path
) -> tuple[list[dict[str, object]], list[Problem]]:
    """Decode, threshold and write every pair under `folder`: manifest rows and problems."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows: list[dict[str, object]] = []
    problems: list[Problem] = []
    for pair in tqdm(pairs, desc="extract", unit="pair", mininterval=1.0):
        try:
            image, mask = load_pair(source, pair)
        except PairError as error:
            problems.extend(error.problems)
            continue
        row = manifest_row(pair, image, mask)
        row["image_sha256"] = write_hashed(folder / str(row["image_path"]), encode_png(image))
        row["mask_sha256"] = write_hashed(folder / str(row["mask_path"]), encode_png(mask))
        rows.append(row)
    return rows, problems


@dataclass(frozen=True)
class Geometry:
    """The voxel spacing every extracted slice gets, and where it came from."""

    pixel_spacing_mm: float
    slice_thickness_mm: float
    origin: str


def archive_geometry(
    source: Source, entries: Sequence[Entry], params: ExtractParams, archive: str
) -> tuple[Geometry, list[Entry]]:
    """The archive's spacing file at the top of its CT tree, else `extract.pixel_spacing_mm`
    and `extract.slice_thickness_mm`; and the entries without that file (it is read, not
    extracted). A spacing file that is present but invalid stops the stage."""
    usable = [entry.name for entry in entries if not entry.refusal]
    ct_root = find_ct_root((name for name in usable if not unsafe_name_reason(name)), archive)
    name = f"{ct_root}{SPACING_FILE}"
    if name not in usable:
        origin = f"params (no {name} in the archive)"
        return Geometry(params.pixel_spacing_mm, params.slice_thickness_mm, origin), list(entries)
    spacing = parse_spacing_json(source.read(name), f"{archive}: {name}")
    rest = [entry for entry in entries if entry.name != name]
    return Geometry(spacing["pixel_spacing_mm"], spacing["slice_thickness_mm"], name), rest


def extract_metrics(result: ExtractResult) -> dict[str, int]:
    """Flat counts: pairs written, per class and subset, and files per problem category."""
    counts = Counter(problem.category for problem in result.problems)
    metrics = {
        "pairs": len(result.rows),
        "entries": result.entries,
        "matched_pairs": result.matched_pairs,
    }
    metrics.update({category: counts[category] for category in PROBLEM_CATEGORIES})
    for class_name in CLASS_NAMES:
        rows = [row for row in result.rows if row["class"] == class_name]
        metrics[f"pairs_{class_name.lower()}"] = len(rows)
        metrics[f"cases_{class_name.lower()}"] = len({row["case_id"] for row in rows})
        metrics[f"lesion_slices_{class_name.lower()}"] = sum(
            1 for row in rows if int(row["lesion_pixels"]) > 0
        )
    for subset in SUBSET_FOLDERS.values():
        metrics[f"pairs_{subset.lower()}"] = sum(
            1 for row in result.rows if row["subset"] == subset
        )
    return metrics


def format_report(result: ExtractResult, params: ExtractParams) -> str:
    """Readable summary: counts, then every problem file and why, grouped by category."""
    metrics = extract_metrics(result)
    lines = [
        "extract report",
        f"archive: {result.archive}",
        f"CT tree: '{result.ct_root}'",
        f"subsets: {', '.join(params.subsets)}; mask suffix: '{params.mask_suffix}'",
        f"geometry: {result.geometry}",
        "",
        "counts",
        *(f"  {key:<28}{value}" for key, value in metrics.items()),
    ]
    by_category: dict[str, list[Problem]] = defaultdict(list)
    for problem in result.problems:
        by_category[problem.category].append(problem)
    for category, meaning in PROBLEM_CATEGORIES.items():
        problems = sorted(by_category[category], key=lambda p: (p.path, p.reason))
        if problems:
            lines += ["", f"{category} ({len(problems)}): {meaning}"]
            lines += [f"  {problem.path}: {problem.reason}" for problem in problems]
    return "\n".join(lines) + "\n"


def extract_archive(
    params: ExtractParams, output: Path, report: Path, metrics: Path
) -> ExtractResult:
    """Run the stage: `output` folder (images, masks, manifest.csv), report and metrics.

    Fatal (DataError) only when the archive is missing, refused, has no CT tree, or yields
    no usable pair; the report is written in that last case too, to show why.
    """
    archive = Path(params.archive)
    source = open_source(archive, params.max_uncompressed_mb)
    try:
        entries = source.entries()
        geometry, slice_entries = archive_geometry(source, entries, params, str(archive))
        listing = classify_entries(slice_entries, params.subsets, str(archive))
        pairing = pair_slices(listing.slices, params.mask_suffix)
        with atomic_path(output) as folder:
            rows, pair_problems = write_pairs(source, pairing.pairs, folder)
            for row in rows:
                row["pixel_spacing_mm"] = geometry.pixel_spacing_mm
                row["slice_thickness_mm"] = geometry.slice_thickness_mm
            result = ExtractResult(
                archive=str(archive),
                ct_root=listing.ct_root,
                entries=len(entries),
                matched_pairs=len(pairing.pairs),
                rows=rows,
                problems=listing.problems + pairing.problems + pair_problems,
                geometry=(
                    f"{geometry.pixel_spacing_mm:g} mm pixels, {geometry.slice_thickness_mm:g} mm "
                    f"slices, from {geometry.origin}"
                ),
            )
            if not rows:
                write_text_atomic(report, format_report(result, params))
                raise DataError(
                    f"{archive}: no usable image/mask pair in subsets {list(params.subsets)} "
                    f"of '{listing.ct_root}' ({len(entries)} entries); see {report}"
                )
            write_manifest(folder / "manifest.csv", pd.DataFrame(rows))
    finally:
        source.close()
    write_text_atomic(report, format_report(result, params))
    write_json(metrics, extract_metrics(result))
    return result
