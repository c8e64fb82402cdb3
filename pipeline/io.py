"""File plumbing shared by every stage: atomic outputs, PNG I/O, manifests, flat JSON metrics.

Every output is written to a temporary sibling and renamed into place when complete, so a
crash or a failed check never leaves a half-written file or folder behind for DVC to cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

# Columns every stage's manifest carries, in this order; later stages append their own
# (`split` adds `split` and `mini_test`). Paths are relative to the manifest's own folder.
# The sha256 of each file makes the manifest a fingerprint of the pixels it lists: downstream
# stages declare the manifest as their DVC dependency instead of the folder of thousands of
# PNGs (hashing those on every `dvc status` dominated its time), and check the files they
# read against it (`verify_content`). Every row carries its geometry in mm (the pixel spacing
# within the slice, square pixels, and the slice thickness), so metrics can be physical; a
# case's slices stack in the order of their ids (zero-padded slice numbers).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "case_id",
    "class",
    "source",
    "source_id",
    "image_path",
    "mask_path",
    "width",
    "height",
    "lesion_pixels",
    "image_sha256",
    "mask_sha256",
    "pixel_spacing_mm",
    "slice_thickness_mm",
)
MANIFEST_DTYPES: dict[str, str] = {
    "id": "string",
    "case_id": "string",
    "class": "string",
    "source": "string",
    "source_id": "string",
    "image_path": "string",
    "mask_path": "string",
    "width": "int64",
    "height": "int64",
    "lesion_pixels": "int64",
    "image_sha256": "string",
    "mask_sha256": "string",
    "pixel_spacing_mm": "float64",
    "slice_thickness_mm": "float64",
}


class DataError(RuntimeError):
    """An input file or manifest is missing, unreadable or inconsistent; names the file."""


# Scratch folders of `atomic_path`: `.<target name>.<8 random characters>.partial` beside the
# target (git- and DVC-ignored). The suffix-less form is what versions before it left behind.
SCRATCH_SUFFIX = ".partial"
_SCRATCH_NAME = re.compile(r"\.(.+)\.[a-z0-9_]{8}(?:\.partial)?")
# Per folder, the scratch names found there when this process first wrote into it, by target
# name: one listing per folder, not one per file written (a folder may hold 30,000 files).
_scratch_found: dict[str, dict[str, list[str]]] = {}


def _owner_is_alive(scratch: Path) -> bool:
    """Whether a live process holds the scratch folder's lock (flock dies with its holder)."""
    try:
        descriptor = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def remove_stale_scratch(target: Path) -> list[Path]:
    """Remove the scratch folders that killed writers of `target` left beside it.

    A scratch folder whose lock no live process holds belongs to a writer that died (a kill,
    an out-of-memory kill, a power cut) before its `finally` ran. Only scratch folders of this
    very target are touched, so the rule is safe in a user's folder too. Returns them.
    """
    parent = os.path.abspath(target.parent)
    found = _scratch_found.get(parent)
    if found is None:
        found = {}
        with os.scandir(parent) as entries:
            for entry in entries:
                match = _SCRATCH_NAME.fullmatch(entry.name)
                if match and entry.is_dir(follow_symlinks=False):
                    found.setdefault(match.group(1), []).append(entry.name)
        _scratch_found[parent] = found
    removed = []
    for name in found.pop(target.name, []):
        scratch = Path(parent) / name
        if not _owner_is_alive(scratch):
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(scratch)
    return removed


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success move it onto `target`.

    Works for files and folders alike. The temporary path lies in a scratch folder beside
    `target` (same file system, so moves are renames). A file target is replaced by one
    atomic rename. A folder cannot be swapped for another atomically on POSIX, so a folder
    target takes two renames: the old folder into the scratch folder, then the new one into
    place. A crash between the two leaves `target` absent (DVC then sees the stage's output
    missing and reruns it), never half-written. On error the scratch folder is removed and
    `target` keeps its previous content (or stays absent).

    A writer killed before its cleanup leaves its scratch folder behind; the next
    `atomic_path` on the same target removes it (`remove_stale_scratch`). The scratch
    folder's flock marks it live, so a concurrent writer's folder is never taken for stale.
    (flock is POSIX: Linux and macOS, where the pipeline runs.)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(target)
    # Locked under a name the sweep ignores, then renamed to its scratch name (the lock
    # follows the folder): no other writer can see it unlocked and take it for stale.
    starting = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".starting", dir=target.parent)
    )
    lock = os.open(starting, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    scratch = starting.with_name(starting.name.removesuffix(".starting") + SCRATCH_SUFFIX)
    temporary = scratch / target.name
    try:
        os.rename(starting, scratch)
        yield temporary
        if not temporary.exists():
            raise DataError(f"{target}: the writer produced nothing")
        replaces_folder = target.is_dir() and not target.is_symlink()
        if replaces_folder or (temporary.is_dir() and os.path.lexists(target)):
            os.rename(target, scratch / "previous")  # os.replace cannot overwrite a folder
        os.replace(temporary, target)
    finally:
        for folder in (starting, scratch):
            shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: Path | str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _json_ready(value: object) -> object:
    """Plain JSON types; NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: Path | str, payload: Mapping[str, object]) -> None:
    """Write a (flat, for metrics) JSON document atomically, keys in the given order."""
    text = json.dumps(_json_ready(payload), indent=2, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def read_json_object(path: Path | str, missing_hint: str = "") -> dict[str, object]:
    """The JSON object in `path`; a missing, unreadable or non-object file is a DataError naming
    it (`missing_hint` says what writes the file, when it is missing)."""
    path = Path(path)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = f" ({missing_hint})" if missing_hint else ""
        raise DataError(f"{path}: not found{hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(loaded).__name__}")
    return loaded


# One fixed filter and run-length deflate: lossless, deterministic, about 3x faster than the
# adaptive filter search and smaller on CT slices and flat-colour masks (benchmarks/augment_speed).
PNG_ENCODE_FLAGS = [
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_UP,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
]


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a grey (H, W) or RGB (H, W, 3) uint8 array; deterministic for equal input."""
    if array.dtype != np.uint8:
        raise ValueError(f"PNG arrays must be uint8, got {array.dtype}")
    pixels = array if array.ndim == 2 else cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", pixels, PNG_ENCODE_FLAGS)
    if not ok:
        raise DataError("OpenCV could not encode a PNG")
    return buffer.tobytes()


def sha256_hex(data: bytes) -> str:
    """The sha256 hex digest manifests record for a file's bytes."""
    return hashlib.sha256(data).hexdigest()


def write_hashed(path: Path, data: bytes) -> str:
    """Write `data` to `path` (plain write: callers build whole folders atomically); its hash."""
    path.write_bytes(data)
    return sha256_hex(data)


def write_png(path: Path | str, array: np.ndarray) -> None:
    """Write a grey or RGB uint8 array as PNG, atomically."""
    write_bytes_atomic(path, encode_png(array))


def decode_image(data: bytes, source: str, *, color: bool) -> np.ndarray:
    """Decode the pipeline's own 8-bit PNGs to grey (H, W) or RGB (H, W, 3); DataError if
    corrupt. Files from outside the pipeline go through `decode_untrusted` instead."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    image = cv2.imdecode(buffer, flag) if buffer.size else None
    if image is None:
        raise DataError(f"{source}: not a readable image (corrupt, truncated or not PNG/JPEG)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if color else image


# ---------------------------------------------------------------- untrusted images

# The most bytes a PNG or JPEG can need per pixel (16-bit RGBA, stored), plus room for
# metadata: a file larger than this for its pixel limit holds something other than pixels.
MAX_BYTES_PER_PIXEL = 8
METADATA_SLACK_BYTES = 1 << 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the size): C0-CF except DHT, JPG and DAC.
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_MARKERS_WITHOUT_LENGTH = frozenset([0x01, *range(0xD0, 0xD8)])


class ImageRefused(DataError):
    """An input image refused before decoding because it is over a size limit."""


def image_header_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from a PNG's IHDR or a JPEG's frame header; None if `data`
    is neither. Reads only headers, so a decompression bomb costs nothing here."""
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return "PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not data.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in JPEG_MARKERS_WITHOUT_LENGTH:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in JPEG_FRAME_MARKERS:
            if position + 9 > len(data):
                return None
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return "JPEG", width, height
        position += 2 + length
    return None


# File name suffixes (lower case) taken for PNG/JPEG slices, the two formats read from outside
# the pipeline (`decode_untrusted`); extract and the new-images command both pick files by them.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def max_file_bytes(max_pixels: int) -> int:
    """Largest PNG/JPEG file accepted for a pixel limit (see MAX_BYTES_PER_PIXEL)."""
    return max_pixels * MAX_BYTES_PER_PIXEL + METADATA_SLACK_BYTES


def decode_untrusted(data: bytes, source: str, max_pixels: int, limit: str) -> np.ndarray:
    """Decode PNG/JPEG bytes from outside the pipeline without changing them: uint8 or
    uint16, grey (H, W), BGR (H, W, 3) or BGRA (H, W, 4); palettes are expanded.

    The size is read from the header first and an image over `max_pixels` is refused
    (ImageRefused naming `source` and `limit`) before any pixel is decoded. Any other
    format (BMP, TIFF, ... behind a .png name) is refused: only these two decoders run on
    untrusted bytes. Decoder failures of every kind become DataError naming `source`.
    """
    header = image_header_size(data)
    if header is None:
        raise DataError(f"{source}: not a readable image (no PNG or JPEG header)")
    kind, width, height = header
    if width * height > max_pixels:
        raise ImageRefused(
            f"{source}: {kind} of {width}x{height} = {width * height:,} pixels, over "
            f"{limit} = {max_pixels:,}; not decoded"
        )
    try:
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        reason = str(error).strip().splitlines()[-1][:200]
        raise DataError(f"{source}: the {kind} decoder failed ({reason})") from None
    if pixels is None or pixels.shape[:2] != (height, width):
        raise DataError(f"{source}: not a readable image (corrupt or truncated {kind})")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{source}: {pixels.dtype} pixels; only 8- and 16-bit are read")
    return pixels


def read_untrusted(path: Path | str, max_pixels: int, limit: str) -> np.ndarray:
    """`decode_untrusted` of a file, refusing a file larger than `max_file_bytes` unread."""
    path = Path(path)
    cap = max_file_bytes(max_pixels)
    try:
        with path.open("rb") as file:
            # The size now, then never more than the cap (the file may still grow).
            size = os.fstat(file.fileno()).st_size
            data = b"" if size > cap else file.read(cap + 1)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    if max(size, len(data)) > cap:
        raise ImageRefused(
            f"{path}: over {cap:,} bytes, more than a PNG/JPEG within {limit} = "
            f"{max_pixels:,} pixels can need; not decoded"
        )
    return decode_untrusted(data, str(path), max_pixels, limit)


def window_to_uint8(values: np.ndarray, level: float, width: float) -> np.ndarray:
    """Display window: `level - width/2` maps to 0, `level + width/2` to 255, linear between,
    clipped, rounded half to even (float64, so the bytes are the same on every machine)."""
    scaled = values.astype(np.float64)  # one float64 copy, worked on in place
    scaled -= level - width / 2.0
    scaled *= 255.0 / width
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def untrusted_to_grey(
    pixels: np.ndarray, level: float, width: float
) -> tuple[np.ndarray, list[str]]:
    """8-bit grey (H, W) of a `decode_untrusted` image, and the conversions it took.

    The rule: an alpha channel is ignored (`alpha_ignored`); colour whose channels differ
    becomes grey by luminance (`colour`; grey stored as RGB is taken as it is); 16-bit
    values go through the window `level`/`width` in stored units (`16bit`): for CT stored
    as HU + 1024, level 1064 and width 80 give the brain window (W 80 / L 40 HU) of the
    8-bit training slices. An image with no value inside the window comes out black and
    white only, a sign that the window does not fit its encoding (`16bit_outside_window`).
    """
    conversions: list[str] = []
    if pixels.ndim == 3:
        if pixels.shape[2] == 4:
            conversions.append("alpha_ignored")
        colour = pixels[..., :3]
        if (colour[..., 0] == colour[..., 1]).all() and (colour[..., 1] == colour[..., 2]).all():
            pixels = colour[..., 0]
        else:
            conversions.append("colour")
            pixels = cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_BGR2GRAY)
    if pixels.dtype == np.uint16:
        conversions.append("16bit")
        inside = (pixels > level - width / 2.0) & (pixels < level + width / 2.0)
        if not inside.any():  # all black or white: the window does not fit the encoding
            conversions.append("16bit_outside_window")
        pixels = window_to_uint8(pixels, level, width)
    return np.ascontiguousarray(pixels), conversions


def read_image(path: Path | str, *, color: bool = False) -> np.ndarray:
    """Read an image file as grey (H, W) or RGB (H, W, 3) uint8; DataError names the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    return decode_image(data, str(path), color=color)


def read_manifest(path: Path | str, extra_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Load a stage manifest, checking that the contract's columns are there.

    Paths stay as written (relative to the manifest's folder); use `resolve_path`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found (did the upstream stage run?)")
    try:
        frame = pd.read_csv(
            path, dtype={"id": "string", "case_id": "string"}, keep_default_na=False
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV manifest ({error})") from None
    missing = [c for c in (*MANIFEST_COLUMNS, *extra_columns) if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: manifest lacks columns {missing}")
    for column, dtype in MANIFEST_DTYPES.items():
        frame[column] = frame[column].astype(dtype)
    if frame["id"].duplicated().any():
        duplicated = frame.loc[frame["id"].duplicated(), "id"].head(5).tolist()
        raise DataError(f"{path}: duplicate ids in manifest, e.g. {duplicated}")
    frame.attrs["root"] = str(path.parent)
    frame.attrs["path"] = str(path)
    return frame


def marked_mini_test(split: pd.DataFrame) -> pd.DataFrame:
    """The rows of a split manifest marked `mini_test` (the CSV's `True`, however cased or
    spaced), with the manifest's root for `resolve_path`."""
    chosen = split[split["mini_test"].astype(str).str.strip().str.lower() == "true"].copy()
    chosen.attrs.update(split.attrs)
    return chosen


def write_manifest(path: Path | str, frame: pd.DataFrame) -> None:
    """Write a manifest atomically: contract columns first, rows sorted by id (deterministic)."""
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"manifest for {path} lacks columns {missing}")
    extra = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    ordered = frame[[*MANIFEST_COLUMNS, *extra]].sort_values("id", kind="stable")
    write_text_atomic(path, ordered.to_csv(index=False, lineterminator="\n"))


def verify_content(manifest: pd.DataFrame) -> None:
    """Check that every listed image and mask exists and still has its recorded sha256.

    DataError names the manifest (as `read_manifest` recorded it), how many files are missing
    or differ, and examples: a file edited or replaced after its stage ran would otherwise be
    read silently, since DVC tracks downstream stages through the manifest alone.
    """
    source = manifest.attrs.get("path", "manifest")
    missing: list[str] = []
    changed: list[str] = []
    for column in ("image", "mask"):
        for relative, expected in zip(
            manifest[f"{column}_path"], manifest[f"{column}_sha256"], strict=True
        ):
            path = resolve_path(manifest, relative)
            try:
                data = path.read_bytes()
            except OSError:
                missing.append(str(path))
                continue
            if sha256_hex(data) != expected:
                changed.append(str(path))
    if missing:
        raise DataError(
            f"{source}: {len(missing)} listed files are missing, e.g. {missing[:3]}; "
            "run `dvc repro` to rebuild them"
        )
    if changed:
        raise DataError(
            f"{source}: {len(changed)} listed files differ from their manifest sha256 (edited "
            f"after the stage that wrote them?), e.g. {changed[:3]}; run `dvc repro`"
        )


def resolve_path(manifest: pd.DataFrame, relative: str) -> Path:
    """Absolute-or-cwd-relative path of a manifest entry (entries are relative to its folder)."""
    return Path(manifest.attrs.get("root", ".")) / relative


def relative_to(path: Path, folder: Path) -> str:
    """`path` written relative to `folder` (may climb with `..`), with forward slashes."""
    return Path(os.path.relpath(path, folder)).as_posix()


# An archive may carry its geometry in this file at the top of its CT tree
# (`.../CT Images/data/spacing.json`): the phantom writes it; the Kaggle archive has none,
# and `extract` then takes the geometry from params.
SPACING_FILE = "spacing.json"
SPACING_KEYS = ("pixel_spacing_mm", "slice_thickness_mm")
SPACING_FILE_MAX_BYTES = 4096


def spacing_json(pixel_spacing_mm: float, slice_thickness_mm: float) -> bytes:
    """The bytes of a spacing file (sorted keys, so equal geometry gives equal bytes)."""
    geometry = dict(zip(SPACING_KEYS, (pixel_spacing_mm, slice_thickness_mm), strict=True))
    return (json.dumps(geometry, sort_keys=True, indent=2) + "\n").encode("utf-8")


def parse_spacing_json(data: bytes, source: str) -> dict[str, float]:
    """{pixel_spacing_mm, slice_thickness_mm} from a spacing file; DataError says what is wrong."""
    if len(data) > SPACING_FILE_MAX_BYTES:
        raise DataError(f"{source}: {len(data)} bytes, over the {SPACING_FILE_MAX_BYTES} allowed")
    try:
        geometry = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{source}: not a JSON spacing file ({error})") from None
    if not isinstance(geometry, dict) or sorted(geometry) != sorted(SPACING_KEYS):
        raise DataError(f"{source}: must hold exactly the keys {list(SPACING_KEYS)}")
    for key, value in geometry.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{source}: {key} must be a number of mm, got {value!r}")
        if not (math.isfinite(value) and value > 0.0):
            raise DataError(f"{source}: {key} must be positive and finite, got {value!r}")
    return {key: float(geometry[key]) for key in SPACING_KEYS}
