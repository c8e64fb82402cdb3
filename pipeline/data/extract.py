"""Stage `extract`: CT slices and masks out of the Kaggle-layout archive (zip or folder).

The archive holds `.../CT Images/data/<Subset>/<Class>/<images|mask>/<case>/<slice>.png`
(next to MRI and PET folders that this project ignores). Extraction is four small steps:

1. list the archive's entries, refusing unsafe ones (absolute paths, `..`, links, special
   files, duplicate zip names) and checking their summed size against a cap;
2. classify each entry into a `SliceFile` (subset, class, case, kind, stem) or a `Problem`
   (names that cannot name an output file are problems too);
3. pair images with masks by (subset, class, case, stem) - a pure function of the listing;
4. read each pair's two members in this process (bounded: see `ZipSource`,
   `FolderSource`); then, in `extract.workers` processes, check their pixel count from the
   header, decode them in memory as stored, convert the image to 8-bit grey and the mask
   to 0/255 by documented rules (`untrusted_to_grey`, `mask_to_binary`), and write PNGs
   named by slice id into a temporary folder that replaces the output. Rows and problems
   keep the pairs' order, so the outputs are the same for any number of workers.

Entries are never extracted by their archive names (outputs are named by validated slice
ids), so no member can land outside the output folder; unsafe members are still refused
and reported. Every file the archive holds ends up either in a written pair or in exactly
one problem category of the report, never silently dropped.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd

from pipeline.classes import SOURCE_CLASSES, metric_label
from pipeline.io import (
    IMAGE_SUFFIXES,
    SPACING_FILE,
    DataError,
    ImageRefused,
    atomic_path,
    decode_untrusted,
    encode_png,
    max_file_bytes,
    parse_spacing_json,
    untrusted_to_grey,
    write_hashed,
    write_json,
    write_manifest,
    write_text_atomic,
)
from pipeline.parallel import bounded_ordered_map, worker_count
from pipeline.params import ExtractParams
from pipeline.zip_directory import central_directory_records, read_central_directory

Kind = Literal["image", "mask"]

# Folder names are matched case-insensitively and written in their canonical spelling.
SUBSET_FOLDERS = {"training": "Training", "testing": "Testing"}
CLASS_FOLDERS = {name.lower(): name for name in SOURCE_CLASSES}
KIND_FOLDERS: dict[str, Kind] = {"images": "image", "mask": "mask", "masks": "mask"}
CT_ROOT_PARTS = ("ct images", "data")
# Slice ids are `<Class>_<case>_<stem>` for Training; Testing stems get this prefix so that
# a Testing slice never shares an id with a Training slice of the same case and stem.
SUBSET_STEM_PREFIX = {"Training": "", "Testing": "test-"}
# Case folders and file stems become parts of output file names: letters, digits and a few
# punctuation marks, never a path separator, a leading dot or a control character (matched
# with fullmatch: `$` would let a trailing newline through).
SAFE_NAME = re.compile(r"\w[\w .()+-]*")
# Longest slice id, in UTF-8 bytes: file names are limited to 255 bytes, and later stages
# add up to ~75 to the id (an augmentation prefix of up to ~52, `.png`, and the 19 of
# atomic_path's scratch names around a file written alone).
MAX_ID_BYTES = 160
MEGABYTE = 1024 * 1024
# Zip members are inflated this many bytes at a time (zipfile otherwise asks zlib for up
# to 2 GiB at once), so memory stays bounded whatever a member's header claims.
READ_CHUNK_BYTES = 1 << 20
# Pairs read ahead per worker: enough that no worker waits for the reading process. And
# archive bytes read ahead: a 512-px pair is about 0.2 MB, but a hostile archive may hold
# members of up to max_file_bytes (135 MB by default) each, so beyond this sum one pair at
# a time is read (plus one pair: its size is known only once read).
PAIRS_IN_FLIGHT_PER_WORKER = 4
BYTES_IN_FLIGHT = 64 * MEGABYTE
# Compression methods whose inflation zipfile can bound (bzip2 and LZMA inflate a whole
# compressed chunk at once, whatever its expansion).
BOUNDED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}

# Problem categories, in report order, with what each means.
PROBLEM_CATEGORIES: dict[str, str] = {
    "refused_members": "unsafe entries refused (could write outside the output folder)",
    "ignored_files": "outside the CT tree, in a subset not selected, or OS metadata",
    "non_image_files": "inside the CT tree but not PNG/JPEG",
    "misplaced_files": "images not at <Subset>/<Class>/<images|mask>/<case>/<slice>",
    "unusable_names": "case folder or file names that cannot name an output (see each reason)",
    "duplicate_files": "a second file for a slice already listed (kept the first by name)",
    "unpaired_images": "images without a mask",
    "unpaired_masks": "masks without an image",
    "unreadable_files": "files that could not be read or decoded (pair dropped)",
    "oversized_files": "images over extract.max_pixels or its byte cap, not decoded (pair dropped)",
    "unreadable_masks": "masks the binarisation rule cannot read (pair dropped)",
    "size_mismatches": "pairs whose image and mask sizes differ (pair dropped)",
    "dropped_partners": "readable files dropped with their pair (see the two lists above)",
}


@dataclass(frozen=True)
class Entry:
    """One file of the archive: its name (forward slashes) and why it is refused, if it is."""

    name: str
    refusal: str | None = None
    size: int = 0  # bytes (declared, for zip members)
    category: str = "refused_members"  # the problem category of a refusal


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
    class_name: str  # one of classes.SOURCE_CLASSES
    case_id: str
    kind: Kind
    stem: str


@dataclass(frozen=True)
class SlicePair:
    id: str
    subset: str
    class_name: str  # one of classes.SOURCE_CLASSES
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
    conversions: Counter[str]  # CONVERSIONS key -> pairs written after that conversion
    read_bytes: int  # bytes actually read (inflated, for a zip) from the archive
    geometry: str  # the voxel spacing given to every slice, and where it came from


# Conversions of what extract writes (8-bit grey images, 0/255 masks), counted in the metrics.
CONVERSIONS: dict[str, str] = {
    "images_16bit": "16-bit images mapped to 8 bits by extract.window_16bit",
    "images_16bit_outside_window": "of those, images with no value inside the window (check it)",
    "images_colour": "colour images (channels differ) converted to grey by luminance",
    "images_alpha_ignored": "images whose alpha channel was dropped",
    "masks_16bit": "16-bit masks binarised on their own value range",
    "masks_colour": "colour masks (channels differ) read by their brightest channel",
    "masks_from_alpha": "masks whose lesion was read from the alpha channel",
}


class Source(Protocol):
    read_bytes: int

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


class _PatchedFile(io.FileIO):
    """A file read with one byte range replaced (the zip's central directory, patched)."""

    def __init__(self, path: Path, start: int, patched: bytes) -> None:
        super().__init__(path, "rb")
        self.start, self.patched = start, patched

    def read(self, size: int = -1) -> bytes:
        position = self.tell()
        data = super().read(size)
        low = max(position, self.start)
        high = min(position + len(data), self.start + len(self.patched))
        if low >= high:
            return data
        replaced = self.patched[low - self.start : high - self.start]
        return data[: low - position] + replaced + data[high - position :]


def open_zip_with_bad_names(
    path: Path, start: int, directory: bytearray
) -> tuple[zipfile.ZipFile, set[str]]:
    """Open a zip some of whose names are flagged UTF-8 but are not, which zipfile refuses
    outright (UnicodeDecodeError for the whole archive), given its central directory
    (`read_central_directory`).

    The directory is handed to zipfile with those names' UTF-8 flag cleared, so zipfile
    decodes them as cp437 (always possible); they are returned so that each is reported,
    and never read.
    """
    bad: set[str] = set()
    for position, flags, name in central_directory_records(directory):
        if flags & 0x800:
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                directory[position + 8 : position + 10] = (flags & ~0x800).to_bytes(2, "little")
                bad.add(name.decode("cp437"))
    return zipfile.ZipFile(_PatchedFile(path, start, bytes(directory))), bad


class ZipSource:
    """Reads a zip member by member; never unpacks the whole archive.

    Memory stays bounded whatever a member's header claims: a member declaring more than
    `max_member_bytes` is refused unread, only stored and deflate members are inflated, and
    they are inflated READ_CHUNK_BYTES at a time. zipfile stops each member at the size the
    central directory declares, and its CRC check then fails for a member that lied.
    """

    def __init__(self, path: Path, max_member_bytes: int, max_entries: int) -> None:
        self.path = path
        self.max_member_bytes = max_member_bytes
        self.read_bytes = 0
        bad_names: set[str] = set()
        try:
            start, directory = read_central_directory(path, max_entries)  # before zipfile
            try:
                self.archive = zipfile.ZipFile(path)
            except UnicodeDecodeError:
                self.archive, bad_names = open_zip_with_bad_names(path, start, directory)
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(f"{path}: not a readable zip archive ({error})") from None
        self.members: dict[str, zipfile.ZipInfo] = {}
        self.listed: list[Entry] = []
        for info in self.archive.infolist():
            if info.is_dir():
                continue
            if info.filename in bad_names:
                reason = "name flagged as UTF-8 is not valid UTF-8 (shown as cp437)"
                self.listed.append(Entry(info.filename, reason, category="unusable_names"))
                continue
            refusal = zip_entry_refusal(info)
            if refusal is None and info.filename in self.members:
                refusal = "duplicate member name (an earlier member has it)"
            if refusal is None:
                self.members[info.filename] = info
            self.listed.append(Entry(info.filename, refusal, info.file_size))

    def close(self) -> None:
        file = self.archive.fp
        self.archive.close()
        if isinstance(file, _PatchedFile):  # zipfile leaves a file it was given open
            file.close()

    def declared_size(self) -> int:
        return sum(info.file_size for info in self.archive.infolist())

    def entries(self) -> list[Entry]:
        return list(self.listed)

    def read(self, name: str) -> bytes:
        info = self.members[name]
        if info.flag_bits & 0x1:
            raise DataError(f"{name}: encrypted member")
        if info.compress_type not in BOUNDED_METHODS:
            raise DataError(
                f"{name}: compression method {info.compress_type} (only stored and deflate "
                "are read: their inflation can be bounded)"
            )
        if info.file_size > self.max_member_bytes:
            raise ImageRefused(
                f"{name}: declares {info.file_size:,} bytes, over the {self.max_member_bytes:,}"
                " that a PNG/JPEG within extract.max_pixels can need; not read"
            )
        chunks = []
        try:
            with self.archive.open(info) as member:
                while chunk := member.read(READ_CHUNK_BYTES):
                    self.read_bytes += len(chunk)
                    chunks.append(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as error:
            raise DataError(f"{name}: cannot read member ({error})") from None
        return b"".join(chunks)


class FolderSource:
    """Reads an unpacked archive; follows symbolic links only when they stay inside it.

    The same caps as for a zip: the sum of the files' sizes, and per file the bytes a
    PNG/JPEG within extract.max_pixels can need (a larger file is refused unread).
    """

    def __init__(self, path: Path, max_member_bytes: int, max_entries: int) -> None:
        self.path = path
        self.root = path.resolve()
        self.max_member_bytes = max_member_bytes
        self.max_entries = max_entries
        self.read_bytes = 0
        self.listed: list[Entry] | None = None
        self.seen = 0  # folder entries listed so far, against max_entries

    def close(self) -> None:
        """Nothing to release; present so both sources are used alike."""

    def declared_size(self) -> int:
        return sum(entry.size for entry in self.entries())

    def entries(self) -> list[Entry]:
        if self.listed is None:
            try:
                self.listed = list(self._walk(self.root, "", {self.root}))
            except OSError as error:
                raise DataError(f"{self.path}: cannot list the folder ({error})") from None
        return list(self.listed)

    def _listing(self, folder: Path) -> list[os.DirEntry]:
        """A folder's entries in name order, refused past extract.max_entries in all (counted
        as they stream in, before any sort holds them)."""
        items = []
        with os.scandir(folder) as listing:
            for item in listing:
                self.seen += 1
                if self.seen > self.max_entries:
                    raise DataError(
                        f"{self.path}: more than extract.max_entries = {self.max_entries:,} "
                        "files and folders; refused while listing"
                    )
                items.append(item)
        return sorted(items, key=lambda entry: entry.name)

    def _walk(self, folder: Path, prefix: str, visited: set[Path]) -> Iterator[Entry]:
        for item in self._listing(folder):
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
                yield Entry(name, size=item.stat().st_size)
            else:
                yield Entry(name, "not a regular file")

    def read(self, name: str) -> bytes:
        try:
            with (self.path / name).open("rb") as file:
                # The size now, then never more than the cap (the file may still grow).
                size = os.fstat(file.fileno()).st_size
                data = b"" if size > self.max_member_bytes else file.read(self.max_member_bytes + 1)
        except OSError as error:
            raise DataError(f"{name}: cannot read ({error.strerror})") from None
        self.read_bytes += len(data)
        if max(size, len(data)) > self.max_member_bytes:
            raise ImageRefused(
                f"{name}: over {self.max_member_bytes:,} bytes, more than a PNG/JPEG within "
                "extract.max_pixels can need; not read"
            )
        return data


def open_source(path: Path, params: ExtractParams) -> ZipSource | FolderSource:
    """The archive as a source; one whose files sum to more than extract.max_uncompressed_mb
    (declared sizes for a zip) is refused before anything is read."""
    cap = max_file_bytes(params.max_pixels)
    if path.is_dir():
        source: ZipSource | FolderSource = FolderSource(path, cap, params.max_entries)
    elif path.is_file():
        source = ZipSource(path, cap, params.max_entries)
    else:
        raise DataError(
            f"{path}: archive not found (extract.archive; run `dvc repro synthesize` for the "
            "phantom, or point it at the Kaggle zip or its unpacked folder)"
        )
    declared = source.declared_size()
    if declared > params.max_uncompressed_mb * MEGABYTE:
        source.close()
        raise DataError(
            f"{path}: declares {declared / MEGABYTE:.1f} MB uncompressed, over "
            f"extract.max_uncompressed_mb = {params.max_uncompressed_mb:g}; refused before "
            "writing anything (raise the cap if you trust this archive)"
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
    if entry.refusal:
        return Problem(entry.category, name, entry.refusal)
    refusal = unsafe_name_reason(name)
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
    if extension.lower() not in IMAGE_SUFFIXES:
        return Problem("non_image_files", name, f"not a PNG/JPEG file ('{extension}')")
    if len(parts) != 5:
        return Problem("misplaced_files", name, "not at <Subset>/<Class>/<kind>/<case>/<slice>")
    class_name = CLASS_FOLDERS.get(parts[1].lower())
    kind = KIND_FOLDERS.get(parts[2].lower())
    if subset is None or class_name is None or kind is None:
        return Problem(
            "misplaced_files",
            name,
            f"expected {'|'.join(SUBSET_FOLDERS.values())}/{'|'.join(SOURCE_CLASSES)}/"
            f"images|mask, got {'/'.join(parts[:3])}",
        )
    case_id = parts[3]
    for label, value in (("case folder", case_id), ("file name", stem)):
        if not SAFE_NAME.fullmatch(value):
            return Problem("unusable_names", name, f"{label} {value!r} is not a plain name")
    id_bytes = len(slice_id(class_name, case_id, subset, stem).encode("utf-8"))
    if id_bytes > MAX_ID_BYTES:
        return Problem(
            "unusable_names",
            name,
            f"case folder and file name make a {id_bytes}-byte slice id, over {MAX_ID_BYTES} "
            "(output file names are limited to 255 bytes)",
        )
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


class MaskUnreadable(DataError):
    """A mask the binarisation rule cannot read; says why."""


def binarize_mask(values: np.ndarray, source: str = "mask") -> np.ndarray:
    """0/255 uint8 lesion mask from one channel of 8- or 16-bit values, on its own range.

    - all 0: no lesion;
    - two values, 0 and v (0/1, 0/255, 0/65535 masks ...): the lesion is v;
    - more values (JPEG shades, resampled edges): the lesion is above half the full scale
      of the values held (127 when they fit in 8 bits, else 32767), which makes JPEG'd
      0/255 masks exact again.
    MaskUnreadable otherwise: one non-zero value everywhere (no background), two values
    without 0, or more values that give no lesion or no background by the threshold (a
    label map 0/1/2, a JPEG'd 0/1 mask): no threshold reads those safely.
    """
    maximum = int(values.max(initial=0))
    if maximum == 0:
        return np.zeros(values.shape, np.uint8)
    if values.dtype == np.uint8:
        distinct = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    else:
        distinct = np.unique(values)
    if len(distinct) == 1:
        raise MaskUnreadable(f"{source}: every pixel is {maximum}; no background")
    if len(distinct) == 2 and distinct[0] != 0:
        raise MaskUnreadable(
            f"{source}: two values {distinct[0]} and {distinct[1]}, neither 0 (background?)"
        )
    if len(distinct) == 2:
        return (values > 0).astype(np.uint8) * 255
    threshold = 127 if maximum <= 255 else 32767
    lesion = values > threshold
    if not lesion.any() or lesion.all():
        raise MaskUnreadable(
            f"{source}: values {distinct[0]}..{maximum} give "
            f"{'no' if not lesion.any() else 'only'} lesion above the threshold {threshold}; "
            "not a binary mask (a label map, or a compressed 0/1 mask?)"
        )
    return lesion.astype(np.uint8) * 255


def mask_to_binary(pixels: np.ndarray, source: str) -> tuple[np.ndarray, list[str]]:
    """0/255 lesion mask of a `decode_untrusted` mask and the conversions it took.

    The channel rule: grey is read as it is; colour keeps each pixel's brightest channel
    (`masks_colour` when the channels differ), so a pure red or green lesion counts. An
    alpha channel counts only when it varies: with uniform colour (white or black RGB with
    an alpha mask) the lesion is the alpha (`masks_from_alpha`); when colour varies too,
    colour and alpha must give the same lesion, else MaskUnreadable (which one is the
    mask?). A uniform alpha (all opaque) is ignored. Then `binarize_mask`.
    """
    conversions = ["masks_16bit"] if pixels.dtype == np.uint16 else []
    if pixels.ndim == 2:
        return binarize_mask(pixels, source), conversions
    colour = pixels[..., :3]
    brightest = colour.max(axis=2)
    if (brightest != colour.min(axis=2)).any():
        conversions.append("masks_colour")
    if pixels.shape[2] == 3:
        return binarize_mask(brightest, source), conversions
    alpha = pixels[..., 3]
    alpha_varies = bool((alpha != alpha.flat[0]).any())
    colour_varies = bool((brightest != brightest.flat[0]).any())
    if not alpha_varies:
        return binarize_mask(brightest, source), conversions
    from_alpha = binarize_mask(alpha, f"{source} (alpha)")
    if not colour_varies:
        return from_alpha, [*conversions, "masks_from_alpha"]
    from_colour = binarize_mask(brightest, source)
    if not np.array_equal(from_colour, from_alpha):
        disagree = int(np.count_nonzero(from_colour != from_alpha))
        raise MaskUnreadable(
            f"{source}: colour and alpha both vary and disagree on {disagree} pixels; "
            "cannot tell which holds the lesion"
        )
    return from_colour, conversions


class PairError(Exception):
    """One pair cannot be used; carries the problems that say why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = problems


def file_problem(error: DataError, path: str, pair_id: str) -> Problem:
    """The report line of a file that could not be read or decoded, in its category."""
    if isinstance(error, ImageRefused):
        category = "oversized_files"
    elif isinstance(error, MaskUnreadable):
        category = "unreadable_masks"
    else:
        category = "unreadable_files"
    return Problem(category, path, f"{error}; dropped {pair_id}")


@dataclass(frozen=True)
class PairTask:
    """One pair as read from the archive, everything `write_pair` needs in a worker process:
    each file's bytes, or the problem that reading it raised (the other file is still
    decoded, so that the report says whether it was usable)."""

    pair: SlicePair
    image: bytes | Problem
    mask: bytes | Problem
    folder: Path  # where images/ and masks/ are written
    params: ExtractParams


@dataclass(frozen=True)
class PairOutcome:
    """What `write_pair` did: the manifest row and conversions, or the problems."""

    row: dict[str, object] | None
    problems: list[Problem]
    conversions: list[str]


def read_pair(source: Source, pair: SlicePair, folder: Path, params: ExtractParams) -> PairTask:
    """A pair's two members, read in this process (the source bounds what it reads)."""
    contents: list[bytes | Problem] = []
    for path in (pair.image_path, pair.mask_path):
        try:
            contents.append(source.read(path))
        except DataError as error:
            contents.append(file_problem(error, path, pair.id))
    image, mask = contents
    return PairTask(pair, image, mask, folder, params)


def task_bytes(task: PairTask) -> int:
    """The archive bytes a pair read and not yet written holds."""
    return sum(len(content) for content in (task.image, task.mask) if isinstance(content, bytes))


def decode_file(
    data: bytes, path: str, is_mask: bool, params: ExtractParams
) -> tuple[np.ndarray, list[str]]:
    """One archive file's bytes as 8-bit grey (image) or 0/255 (mask), and its conversions."""
    pixels = decode_untrusted(data, path, params.max_pixels, "extract.max_pixels")
    if is_mask:
        return mask_to_binary(pixels, path)
    window = params.window_16bit
    grey, conversions = untrusted_to_grey(pixels, window.level, window.width)
    return grey, [f"images_{conversion}" for conversion in conversions]


def load_pair(task: PairTask) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Grey image, 0/255 mask and the conversions of a pair; PairError if a file is
    unreadable, refused, or the sizes differ.

    A readable file whose partner is unusable is reported as a dropped partner, so that
    every file of the pair appears in the report.
    """
    pair = task.pair
    decoded: dict[str, tuple[np.ndarray, list[str]]] = {}
    problems = []
    for path, content in ((pair.image_path, task.image), (pair.mask_path, task.mask)):
        if isinstance(content, Problem):
            problems.append(content)
            continue
        try:
            decoded[path] = decode_file(content, path, path == pair.mask_path, task.params)
        except DataError as error:
            problems.append(file_problem(error, path, pair.id))
    if problems:
        problems += [
            Problem("dropped_partners", path, f"its partner is unusable; dropped {pair.id}")
            for path in decoded
        ]
        raise PairError(problems)
    (image, image_conversions), (mask, mask_conversions) = (
        decoded[pair.image_path],
        decoded[pair.mask_path],
    )
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
    return image, mask, image_conversions + mask_conversions


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


def write_pair(task: PairTask) -> PairOutcome:
    """Decode, threshold, encode, hash and write one pair (the CPU of the stage; runs in a
    worker process). Files are named by slice id, so workers never write the same file."""
    try:
        image, mask, converted = load_pair(task)
    except PairError as error:
        return PairOutcome(None, error.problems, [])
    row = manifest_row(task.pair, image, mask)
    row["image_sha256"] = write_hashed(task.folder / str(row["image_path"]), encode_png(image))
    row["mask_sha256"] = write_hashed(task.folder / str(row["mask_path"]), encode_png(mask))
    return PairOutcome(row, [], converted)


def write_pairs(
    source: Source, pairs: Sequence[SlicePair], folder: Path, params: ExtractParams
) -> tuple[list[dict[str, object]], list[Problem], Counter[str]]:
    """Decode, threshold and write every pair under `folder`: manifest rows, problems and
    the conversions of the pairs written, in the order of `pairs` for any `extract.workers`.

    This process reads the archive pair by pair, only as workers free up (at most
    PAIRS_IN_FLIGHT_PER_WORKER pairs a worker and BYTES_IN_FLIGHT read and not yet
    written), so memory stays flat in the number of pairs; the workers do the rest
    (`write_pair`).
    """
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows: list[dict[str, object]] = []
    problems: list[Problem] = []
    conversions: Counter[str] = Counter()
    tasks = (read_pair(source, pair, folder, params) for pair in pairs)
    window = PAIRS_IN_FLIGHT_PER_WORKER * worker_count(params.workers)
    outcomes = bounded_ordered_map(
        write_pair,
        tasks,
        workers=params.workers,
        window=window,
        description="extract",
        total=len(pairs),
        unit="pair",
        weight=task_bytes,
        max_weight=BYTES_IN_FLIGHT,
    )
    with closing(outcomes):
        for outcome in outcomes:
            if outcome.row is not None:
                rows.append(outcome.row)
            problems.extend(outcome.problems)
            conversions.update(outcome.conversions)
    return rows, problems, conversions


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


def extract_metrics(result: ExtractResult) -> dict[str, int | float]:
    """Flat counts: pairs written, per class and subset, and files per problem category."""
    counts = Counter(problem.category for problem in result.problems)
    metrics = {
        "pairs": len(result.rows),
        "entries": result.entries,
        "matched_pairs": result.matched_pairs,
    }
    metrics.update({category: counts[category] for category in PROBLEM_CATEGORIES})
    metrics.update({f"converted_{key}": result.conversions[key] for key in CONVERSIONS})
    metrics["read_mb"] = round(result.read_bytes / MEGABYTE, 3)
    for class_name in SOURCE_CLASSES:
        rows = [row for row in result.rows if row["class"] == class_name]
        label = metric_label(class_name)
        metrics[f"pairs_{label}"] = len(rows)
        metrics[f"cases_{label}"] = len({row["case_id"] for row in rows})
        metrics[f"lesion_slices_{label}"] = sum(1 for row in rows if int(row["lesion_pixels"]) > 0)
    for subset in SUBSET_FOLDERS.values():
        metrics[f"pairs_{subset.lower()}"] = sum(
            1 for row in result.rows if row["subset"] == subset
        )
    return metrics


def format_report(result: ExtractResult, params: ExtractParams) -> str:
    """Readable summary: counts, then every problem file and why, grouped by category.

    A folder's file names that are not valid UTF-8 (held as surrogates) are written with
    backslash escapes, so that the report is always valid UTF-8."""
    metrics = extract_metrics(result)
    lines = [
        "extract report",
        f"archive: {result.archive}",
        f"CT tree: '{result.ct_root}'",
        f"subsets: {', '.join(params.subsets)}; mask suffix: '{params.mask_suffix}'",
        f"geometry: {result.geometry}",
        "",
        "counts",
        *(f"  {key:<40}{value}" for key, value in metrics.items()),
    ]
    by_category: dict[str, list[Problem]] = defaultdict(list)
    for problem in result.problems:
        by_category[problem.category].append(problem)
    for category, meaning in PROBLEM_CATEGORIES.items():
        problems = sorted(by_category[category], key=lambda p: (p.path, p.reason))
        if problems:
            lines += ["", f"{category} ({len(problems)}): {meaning}"]
            lines += [f"  {problem.path}: {problem.reason}" for problem in problems]
    converted = [
        f"  {key:<40}{result.conversions[key]:<8}{meaning}"
        for key, meaning in CONVERSIONS.items()
        if result.conversions[key]
    ]
    if converted:
        lines += ["", "conversions (pairs written after each)", *converted]
    text = "\n".join(lines) + "\n"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def extract_archive(
    params: ExtractParams, output: Path, report: Path, metrics: Path
) -> ExtractResult:
    """Run the stage: `output` folder (images, masks, manifest.csv), report and metrics.

    Fatal (DataError) only when the archive is missing, refused, has no CT tree, or yields
    no usable pair; the report is written in that last case too, to show why.
    """
    archive = Path(params.archive)
    source = open_source(archive, params)
    try:
        entries = source.entries()
        geometry, slice_entries = archive_geometry(source, entries, params, str(archive))
        listing = classify_entries(slice_entries, params.subsets, str(archive))
        pairing = pair_slices(listing.slices, params.mask_suffix)
        with atomic_path(output) as folder:
            rows, pair_problems, conversions = write_pairs(source, pairing.pairs, folder, params)
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
                conversions=conversions,
                read_bytes=source.read_bytes,
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
