"""File plumbing shared by every stage: atomic outputs, PNG I/O, manifests, flat JSON metrics.

Every output is written to a temporary sibling and renamed into place when complete, so a
crash or a failed check never leaves a half-written file or folder behind for DVC to cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
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


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success move it onto `target`.

    Works for files and folders alike: whatever the caller creates at the yielded path
    replaces `target` in one rename. On error the temporary path is removed and `target`
    keeps its previous content (or stays absent).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    temporary = scratch / target.name
    try:
        yield temporary
        if not temporary.exists():
            raise DataError(f"{target}: the writer produced nothing")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(temporary, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
    """Decode PNG/JPEG bytes to grey (H, W) or RGB (H, W, 3) uint8; DataError if corrupt."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    image = cv2.imdecode(buffer, flag) if buffer.size else None
    if image is None:
        raise DataError(f"{source}: not a readable image (corrupt, truncated or not PNG/JPEG)")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if color else image


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
