"""Hostile and unusual inputs (issue 13): each case with its expected outcome.

Outcomes are one of: reported and skipped (the file is named in the report or on stderr,
the other files are processed), refused with a message naming the file and the limit, or
converted and counted in the metrics. Bombs run in a subprocess whose peak resident memory
(`ru_maxrss`) is checked against a bound far below what the unbounded code needed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import io
from pipeline.data.extract import PROBLEM_CATEGORIES, extract_archive
from pipeline.io import DataError, atomic_path, read_manifest, write_bytes_atomic
from tests.conftest import PROJECT_ROOT, project_params, write_project_params

# ---------------------------------------------------------------- the repository boundary

# Code that reaches outside the repository: a sibling `shared` folder, a grandparent of a
# repository file, an absolute path on a developer's machine.
OUTSIDE_REFERENCES = {
    "a sibling shared folder": re.compile(r"\.\./shared|[\"']shared[\"']"),
    "a grandparent of a repository file": re.compile(r"parents\[[2-9]\]|\.parent\.parent"),
    "the parent of the repository root": re.compile(r"ROOT\.parent\b"),
    "an absolute developer path": re.compile(r"[\"'](?:/work|/home|/mnt|/root|/Users)/"),
}
SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh")


def tracked_sources() -> list[Path]:
    """Every committed or new (not ignored) code, test, benchmark and config file."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [
        PROJECT_ROOT / name
        for name in listed
        if (name.endswith(SOURCE_SUFFIXES) or Path(name).name == "Makefile")
        and (PROJECT_ROOT / name).is_file()
    ]


def test_no_source_reaches_outside_the_repository():
    sources = tracked_sources()
    assert any(path.name == "test_inference.py" for path in sources)
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}: {what}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for what, pattern in OUTSIDE_REFERENCES.items()
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)


# Lines the check must flag; assembled from parts so that this file itself passes it.
FORBIDDEN_EXAMPLES = [
    "SAMPLES = ROOT" + '.parent / "sha' + 'red" / "real-ct-samples"',
    "Path(__file__).resolve().parents" + "[2]",
    "cp .." + "/shared/x tests/",
    'open("/' + 'work/shared/real-ct-samples/README.md")',
]


@pytest.mark.parametrize("line", FORBIDDEN_EXAMPLES)
def test_the_boundary_check_catches_outside_references(line):
    assert any(pattern.search(line) for pattern in OUTSIDE_REFERENCES.values())


def test_real_ct_fixture_is_vendored_with_its_licence():
    fixture = PROJECT_ROOT / "tests" / "data" / "real-ct"
    images = sorted(path.name for path in (fixture / "images").glob("*.png"))
    masks = sorted(path.name for path in (fixture / "masks").glob("*.png"))
    assert images and images == masks
    notice = (fixture / "README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in notice and "CC0" in notice


# ---------------------------------------------------------------- scratch left by a kill

KILLED_WRITER = """
import os, signal, sys
from pipeline.io import atomic_path
with atomic_path(sys.argv[1]) as temporary:
    temporary.mkdir()
    (temporary / "half.png").write_bytes(b"half")
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    print("writing", flush=True)
    sys.stdin.readline()  # a live writer: holds its scratch until told to finish
"""


def python(*arguments: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", *arguments], cwd=PROJECT_ROOT, text=True, **options
    )


def scratch_of(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_scratch_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "data" / "extracted"
    assert python(KILLED_WRITER, str(target), "kill").wait() == -signal.SIGKILL
    left = scratch_of(target.parent)
    assert len(left) == 1 and re.fullmatch(r"\.extracted\.[a-z0-9_]{8}\.partial", left[0])
    assert not target.exists()
    # A scratch folder named the way earlier versions named it, and a user's look-alike
    # folder for another name: only the first is this target's scratch.
    (target.parent / ".extracted.k2j4h5g6" / "extracted").mkdir(parents=True)
    (target.parent / ".other.abcdefgh").mkdir()

    with atomic_path(target) as temporary:
        temporary.mkdir()
        (temporary / "whole.png").write_bytes(b"whole")

    assert scratch_of(target.parent) == [".other.abcdefgh"]
    assert [path.name for path in target.iterdir()] == ["whole.png"]


def test_scratch_of_a_live_writer_is_left_alone(tmp_path):
    target = tmp_path / "out.png"
    writer = python(
        KILLED_WRITER, str(target), "live", stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert writer.stdout.readline() == "writing\n"
        live = scratch_of(tmp_path)
        write_bytes_atomic(target, b"mine")
        assert scratch_of(tmp_path) == live, "a live writer's scratch was removed"
        assert target.read_bytes() == b"mine"
    finally:
        writer.communicate("done\n", timeout=60)
    assert writer.returncode == 0
    assert scratch_of(tmp_path) == []


# The stand-in stage makes Ctrl-C live first, as at a terminal: a shell starts background
# jobs (a test suite run with `&`) with SIGINT ignored, the child would inherit that, and
# Python then installs no KeyboardInterrupt.
TERMINATED_STAGE = """
import signal
import sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from pipeline.io import atomic_path
from stages.common import run_stage

def main(params):
    with atomic_path(sys.argv[1]) as temporary:
        temporary.mkdir()
        (temporary / "half.png").write_bytes(b"half")
        print("writing", flush=True)
        sys.stdin.readline()  # until terminated

run_stage(main, sys.argv[2])
"""


@pytest.mark.parametrize(
    ("stop", "exit_status"),
    [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)],
    ids=["SIGTERM", "Ctrl-C"],
)
def test_a_terminated_stage_removes_its_scratch_and_keeps_its_output(tmp_path, stop, exit_status):
    """SIGTERM (kill, timeout) and Ctrl-C end a stage through its `finally`s: no scratch is
    left for a later run-cache restore (which runs no stage code) to leave beside the outputs."""
    target = tmp_path / "data" / "colorized"
    target.mkdir(parents=True)
    (target / "previous.png").write_bytes(b"previous")
    params = write_project_params(tmp_path / "params.yaml")
    stage = python(
        TERMINATED_STAGE, str(target), str(params), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert stage.stdout.readline() == "writing\n"
        assert len(scratch_of(target.parent)) == 1
        stage.send_signal(stop)
        assert stage.wait(timeout=60) == exit_status
    finally:
        stage.kill()
        stage.communicate(timeout=60)
    assert scratch_of(target.parent) == []
    assert [path.name for path in target.iterdir()] == ["previous.png"]


def test_atomic_path_replaces_a_folder_and_a_file_in_both_directions(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    with atomic_path(target) as temporary:
        temporary.mkdir()
    assert target.is_dir()
    with atomic_path(target) as temporary:
        temporary.write_text("a file again")
    assert target.read_text() == "a file again"
    assert scratch_of(tmp_path) == []


# ---------------------------------------------------------------- hostile files, built here

CT = "CT Images/data/Training"
HEM, ISC = f"{CT}/Hemorrhagic", f"{CT}/Ischemic"
SIDE = 32
MEMORY_BOUND_MB = 1024  # every bomb below took the unbounded code past 2 GB
TIME_BOUND_S = 300  # a hang or a run away, not a speed check (speed is for benchmarks/)


def disc(side: int = SIDE) -> np.ndarray:
    """A lesion: True inside a disc, False outside."""
    mask = np.zeros((side, side), np.uint8)
    cv2.circle(mask, (side // 2, side // 2), side // 4, 1, -1)
    return mask.astype(bool)


def ct_slice(side: int = SIDE) -> np.ndarray:
    return np.random.default_rng(side).integers(0, 256, (side, side), dtype=np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def png(
    rows: np.ndarray,
    colour_type: int,
    bit_depth: int = 8,
    palette: bytes = b"",
    transparency: bytes = b"",
) -> bytes:
    """A PNG written by hand, for the layouts OpenCV cannot write: grey+alpha (type 4) and
    palette (type 3, `palette` RGB triples, `transparency` alpha per palette entry)."""
    height, width = rows.shape[:2]
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    header += bytes([bit_depth, colour_type, 0, 0, 0])
    raw = b"".join(
        b"\x00" + row.astype(">u2" if bit_depth == 16 else "u1").tobytes() for row in rows
    )
    chunks = png_chunk(b"IHDR", header)
    if palette:
        chunks += png_chunk(b"PLTE", palette)
    if transparency:
        chunks += png_chunk(b"tRNS", transparency)
    return (
        io.PNG_SIGNATURE + chunks + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")
    )


def zlib_zeros(length: int, block_bytes: int = 1 << 24) -> bytes:
    """A zlib stream of `length` zero bytes, built in a fraction of a second: one deflated
    block ended by a full flush (which resets the compressor, so that the block can be
    repeated), repeated, then the rest; the Adler-32 of n zeros is (n mod 65521) << 16 | 1."""
    blocks, rest = divmod(length, block_bytes)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(bytes(block_bytes)) + packer.flush(zlib.Z_FULL_FLUSH)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = packer.compress(bytes(rest)) + packer.flush(zlib.Z_FINISH)
    adler = ((length % 65521) << 16) | 1
    return b"\x78\xda" + block * blocks + tail + adler.to_bytes(4, "big")


def png_declaring(width: int, height: int, complete: bool = False) -> bytes:
    """A small PNG whose header declares width x height grey pixels: only a few rows of
    them, or, `complete`, all of them, zero (30000 x 30000 packs into 0.9 MB and took the
    unbounded code to 5.4 GB; OpenCV refuses more than 2^30 pixels itself)."""
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\0\0\0\0"
    rows = zlib_zeros((width + 1) * (height if complete else 4))  # filter byte 0 per row
    idat = png_chunk(b"IDAT", rows)
    return io.PNG_SIGNATURE + png_chunk(b"IHDR", header) + idat + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header is patched to declare width x height."""
    data = bytearray(cv2.imencode(".jpg", ct_slice())[1].tobytes())
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def encode(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8/uint16 array as given (grey, BGR or BGRA channel order)."""
    return cv2.imencode(".png", array)[1].tobytes()


def base_files() -> dict[str, bytes]:
    """Two good pairs that every case must still write: the others processed."""
    lesion = disc().astype(np.uint8) * 255
    return {
        f"{ISC}/images/0019983/000.png": io.encode_png(ct_slice()),
        f"{ISC}/mask/0019983/000.png": io.encode_png(lesion),
        f"{ISC}/images/0019983/001.png": io.encode_png(ct_slice()[::-1].copy()),
        f"{ISC}/mask/0019983/001.png": io.encode_png(np.zeros_like(lesion)),
    }


def pair(case: str, image: bytes, mask: bytes, stem: str = "000") -> dict[str, bytes]:
    return {f"{HEM}/images/{case}/{stem}.png": image, f"{HEM}/mask/{case}/{stem}.png": mask}


def good_pair(case: str = "049", stem: str = "000") -> dict[str, bytes]:
    return pair(case, io.encode_png(ct_slice()), io.encode_png(disc().astype(np.uint8) * 255), stem)


def hu_slice() -> np.ndarray:
    """A 16-bit CT slice stored as HU + 1024: air 0, brain 1064 +- 20, bone up to 3152."""
    values = np.full((SIDE, SIDE), 1064, np.uint16)
    values[:4] = 0
    values[-4:] = 3152
    values[8:24, 8:24] = np.linspace(1044, 1084, 16).astype(np.uint16)[None, :]
    return values


def rgba(colour: tuple[int, int, int], alpha: np.ndarray) -> np.ndarray:
    pixels = np.zeros((SIDE, SIDE, 4), np.uint8)
    pixels[..., :3] = colour[::-1]  # BGR
    pixels[..., 3] = alpha
    return pixels


LESION = disc()
BINARY = LESION.astype(np.uint8)


def write_zip(path: Path, files: dict[str, bytes], **options) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data, **options)
    return path


def write_folder(path: Path, files: dict[str, bytes | int]) -> Path:
    """Files of a folder archive; an int is a sparse file of that many bytes (costs none)."""
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, int):
            with (path / name).open("wb") as file:
                file.truncate(data)
        else:
            (path / name).write_bytes(data)
    return path


def append_to_zip(path: Path, files: dict[str, bytes], method: int) -> Path:
    with zipfile.ZipFile(path, "a", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def patch_declared_size(path: Path, name: str, declared: int) -> None:
    """Make a zip member's local header and central directory record claim `declared`
    uncompressed bytes (the data and its CRC stay as they are)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(name).header_offset
    record = data.rindex(name.encode()) - 46  # the last copy of the name is the directory's
    assert data[local : local + 4] == b"PK\x03\x04" and data[record : record + 4] == b"PK\x01\x02"
    data[local + 22 : local + 26] = declared.to_bytes(4, "little")
    data[record + 24 : record + 28] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def padding_members(count: int, name_bytes: int = 0) -> dict[str, bytes]:
    return {f"MRI Images/{index:05d}{'c' * name_bytes}.txt": b"" for index in range(count)}


def zip_understating_its_entries(folder: Path) -> Path:
    """40 padding members, but the end record says the directory lists 5 entries."""
    path = write_zip(folder / "archive.zip", {**base_files(), **padding_members(40)})
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    data[end + 8 : end + 12] = (5).to_bytes(2, "little") * 2  # entries on this disk, in all
    path.write_bytes(bytes(data))
    return path


def zip_with_lying_member(folder: Path) -> Path:
    """A member declaring 1,000 bytes whose deflate stream inflates to 1 GiB (1 MB packed)."""
    path = folder / "archive.zip"
    name = f"{HEM}/images/049/000.png"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for member, data in {**base_files(), **good_pair()}.items():
            if member != name:
                archive.writestr(member, data)
        with archive.open(name, "w") as member:
            zeros = bytes(1 << 24)
            for _ in range((1 << 30) // len(zeros)):
                member.write(zeros)
    patch_declared_size(path, name, 1000)
    return path


def zip_with_bad_utf8_names(folder: Path) -> Path:
    """Two members whose names are flagged UTF-8 (zipfile flags 'é') but hold 0xFF 0xFE."""
    path = folder / "archive.zip"
    files = {
        **base_files(),
        **pair("049", io.encode_png(ct_slice()), io.encode_png(BINARY * 255), "00é"),
    }
    write_zip(path, files)
    data = path.read_bytes()
    assert data.count("é".encode()) == 4  # two local headers, two directory records
    path.write_bytes(data.replace("é".encode(), b"\xff\xfe"))
    return path


@dataclass(frozen=True)
class Case:
    """One hostile input: the archive holding it beside two good pairs, and the outcome."""

    id: str
    build: Callable[[Path], Path]
    counts: dict[str, int] = field(default_factory=dict)  # metrics that must hold these
    report: tuple[str, ...] = ()  # lines the report must hold (the file and the limit)
    written: dict[str, np.ndarray] = field(default_factory=dict)  # id -> expected mask
    image: tuple[str, np.ndarray] | None = None  # id and expected 8-bit image
    params: dict = field(default_factory=dict)
    error: str | None = None  # refused as a whole: the message (a regex)
    measured: bool = False  # run in a subprocess whose peak memory is bounded


def zipped(files: Callable[[], dict[str, bytes]], **options) -> Callable[[Path], Path]:
    return lambda folder: write_zip(folder / "archive.zip", {**base_files(), **files()}, **options)


def foldered(files: Callable[[], dict[str, bytes | int]]) -> Callable[[Path], Path]:
    return lambda folder: write_folder(folder / "archive", {**base_files(), **files()})


HU_WINDOWED = np.rint(np.clip((hu_slice().astype(np.float64) - 1024) * 255 / 80, 0, 255))
LONG = "x" * 250
CASES = [
    # 1. 16-bit PNGs: read unchanged; images windowed, masks binarised on their own range.
    Case(
        "16-bit CT image (HU + 1024) windowed to 8 bits",
        zipped(lambda: pair("049", encode(hu_slice()), encode(BINARY * 255))),
        counts={"converted_images_16bit": 1, "converted_images_16bit_outside_window": 0},
        image=("Hemorrhagic_049_000", HU_WINDOWED.astype(np.uint8)),
        report=("images_16bit",),
    ),
    *(
        Case(
            f"16-bit mask 0/{value} keeps its lesion",
            zipped(
                lambda value=value: pair(
                    "049", encode(ct_slice()), encode(BINARY.astype(np.uint16) * value)
                )
            ),
            counts={"converted_masks_16bit": 1, "pairs": 3},
            written={"Hemorrhagic_049_000": LESION},
        )
        for value in (1, 255, 65535)
    ),
    Case(
        "16-bit image of 8-bit values: counted as outside the window",
        zipped(lambda: pair("049", encode(ct_slice().astype(np.uint16)), encode(BINARY * 255))),
        counts={"converted_images_16bit": 1, "converted_images_16bit_outside_window": 1},
        report=(
            "  images_16bit_outside_window             1       of those, images with no value",
        ),
    ),
    Case(
        "16-bit colour image to grey, then windowed",
        zipped(
            lambda: pair(
                "049",
                encode(np.stack([hu_slice(), hu_slice(), hu_slice() // 2], -1)),
                encode(BINARY * 255),
            )
        ),
        counts={"converted_images_16bit": 1, "converted_images_colour": 1, "pairs": 3},
    ),
    # 2. Decompression bombs: refused from the header, before decoding.
    Case(
        "PNG declaring 30000x30000 refused before decoding",
        zipped(
            lambda: pair("049", png_declaring(30000, 30000, complete=True), encode(BINARY * 255))
        ),
        counts={"oversized_files": 1, "dropped_partners": 1, "pairs": 2},
        report=(
            f"{HEM}/images/049/000.png: {HEM}/images/049/000.png: PNG of 30000x30000 = "
            "900,000,000 pixels, over extract.max_pixels = 16,777,216; not decoded",
        ),
        measured=True,
    ),
    Case(
        "PNG declaring 40000x40000 under a raised limit: the decoder's error reported",
        zipped(lambda: pair("049", png_declaring(40000, 40000), encode(BINARY * 255))),
        params={"max_pixels": 2_000_000_000},
        counts={"unreadable_files": 1, "dropped_partners": 1, "pairs": 2},
        report=(f"{HEM}/images/049/000.png: {HEM}/images/049/000.png: the PNG decoder failed",),
        measured=True,
    ),
    Case(
        "JPEG declaring 65000x65000 refused before decoding",
        zipped(
            lambda: {
                f"{HEM}/images/049/000.jpg": jpeg_declaring(65000, 65000),
                f"{HEM}/mask/049/000.png": encode(BINARY * 255),
            }
        ),
        counts={"oversized_files": 1, "pairs": 2},
        report=("JPEG of 65000x65000 = 4,225,000,000 pixels, over extract.max_pixels",),
        measured=True,
    ),
    Case(
        "BMP bytes behind a .png name are not decoded",
        zipped(
            lambda: pair(
                "049",
                cv2.imencode(".bmp", ct_slice())[1].tobytes(),
                encode(BINARY * 255),
            )
        ),
        counts={"unreadable_files": 1, "pairs": 2},
        report=("000.png: not a readable image (no PNG or JPEG header)",),
    ),
    # 3. Zip members lying about their size, and the same caps for folders.
    Case(
        "zip member declaring 1,000 bytes that inflates to 1 GiB",
        zip_with_lying_member,
        counts={"unreadable_files": 1, "pairs": 2},
        report=(f"{HEM}/images/049/000.png: {HEM}/images/049/000.png: cannot read member",),
        measured=True,
    ),
    Case(
        "zip member declaring more bytes than an image within the limit can need",
        lambda folder: (
            write_zip(folder / "archive.zip", {**base_files(), **good_pair()}),
            patch_declared_size(folder / "archive.zip", f"{HEM}/images/049/000.png", 500_000_000),
        )[0],
        counts={"oversized_files": 1, "pairs": 2},
        report=(
            "000.png: declares 500,000,000 bytes, over the 135,266,304 that a PNG/JPEG within "
            "extract.max_pixels can need; not read",
        ),
    ),
    Case(
        "bzip2 member (its inflation cannot be bounded) is not read",
        lambda folder: (
            write_zip(folder / "archive.zip", base_files()),
            append_to_zip(folder / "archive.zip", good_pair(), zipfile.ZIP_BZIP2),
        )[0],
        counts={"unreadable_files": 2, "pairs": 2},
        report=("000.png: compression method 12 (only stored and deflate are read",),
    ),
    Case(
        "folder holding a 3 GB file named .png",
        foldered(lambda: {**good_pair(), f"{HEM}/images/049/000.png": 3 << 30}),
        counts={"oversized_files": 1, "pairs": 2},
        report=(
            "000.png: over 135,266,304 bytes, more than a PNG/JPEG within extract.max_pixels "
            "can need; not read",
        ),
        measured=True,
    ),
    Case(
        "folder over extract.max_uncompressed_mb refused before writing",
        foldered(lambda: {**good_pair(), "MRI Images/padding.bin": 3 << 20}),
        params={"max_uncompressed_mb": 2.0},
        error=r"archive: declares 3\.0 MB uncompressed, over extract\.max_uncompressed_mb = 2; "
        "refused before writing",
    ),
    # Millions of empty members cost memory when listed, whatever their sizes: capped.
    Case(
        "zip with more members than extract.max_entries refused before its directory is read",
        zipped(lambda: padding_members(40)),
        params={"max_entries": 30},
        error=r"archive\.zip: its central directory declares 4\d entries in [\d,]+ bytes "
        r"\(512 bytes an entry allowed\), over extract\.max_entries = 30; refused",
    ),
    Case(
        "zip whose end record understates its entries: the records are counted",
        zip_understating_its_entries,
        params={"max_entries": 30},
        error=r"archive\.zip: its central directory holds 4\d entries, over extract\.max_entries",
    ),
    Case(
        "zip whose few entries have long names: refused by directory bytes",
        zipped(lambda: padding_members(3, name_bytes=6000)),
        params={"max_entries": 30},
        error=r"declares 7 entries in [\d,]+ bytes \(512 bytes an entry allowed\)",
    ),
    Case(
        "folder with more entries than extract.max_entries refused while listing",
        foldered(lambda: padding_members(40)),
        params={"max_entries": 30},
        error=r"archive: more than extract\.max_entries = 30 files and folders; refused while "
        "listing",
    ),
    # 6. Names: reported per file, never fatal.
    Case(
        "250-character case folder",
        zipped(lambda: good_pair(LONG)),
        counts={"unusable_names": 2, "pairs": 2},
        report=("case folder and file name make a 266-byte slice id, over 160",),
    ),
    Case(
        "250-character file stem, in a folder",
        foldered(lambda: good_pair("049", LONG)),
        counts={"unusable_names": 2, "pairs": 2},
        report=(f"{HEM}/images/049/{LONG}.png: case folder and file name make a 266-byte",),
    ),
    Case(
        "trailing newline in a case folder",
        zipped(lambda: good_pair("913\n")),
        counts={"unusable_names": 2, "pairs": 2},
        report=("case folder '913\\n' is not a plain name",),
    ),
    Case(
        "invalid UTF-8 in names flagged UTF-8",
        zip_with_bad_utf8_names,
        counts={"unusable_names": 2, "pairs": 2},
        report=("name flagged as UTF-8 is not valid UTF-8 (shown as cp437)",),
    ),
    Case(
        "file name of bytes that are not UTF-8, in a folder",
        foldered(lambda: good_pair("049", "\udcff\udcfe")),  # os.fsencode: b"\xff\xfe"
        counts={"unusable_names": 2, "pairs": 2},
        report=(f"{HEM}/images/049/\\udcff\\udcfe.png: file name '\\udcff\\udcfe' is not",),
    ),
    # 8. Alpha and palette masks.
    Case(
        "lesion only in the alpha of a white RGBA mask",
        zipped(
            lambda: pair("049", encode(ct_slice()), encode(rgba((255, 255, 255), BINARY * 255)))
        ),
        counts={"converted_masks_from_alpha": 1, "pairs": 3},
        written={"Hemorrhagic_049_000": LESION},
    ),
    Case(
        "lesion only in the alpha of a black RGBA mask",
        zipped(lambda: pair("049", encode(ct_slice()), encode(rgba((0, 0, 0), BINARY * 255)))),
        counts={"converted_masks_from_alpha": 1, "pairs": 3},
        written={"Hemorrhagic_049_000": LESION},
    ),
    Case(
        "grey + alpha PNG, lesion in the alpha",
        zipped(
            lambda: pair(
                "049",
                encode(ct_slice()),
                png(np.stack([np.full((SIDE, SIDE), 200), BINARY * 255], -1), colour_type=4),
            )
        ),
        counts={"converted_masks_from_alpha": 1, "pairs": 3},
        written={"Hemorrhagic_049_000": LESION},
    ),
    Case(
        "palette PNG, red lesion",
        zipped(
            lambda: pair(
                "049",
                encode(ct_slice()),
                png(BINARY, colour_type=3, palette=bytes([0, 0, 0, 255, 0, 0])),
            )
        ),
        counts={"converted_masks_colour": 1, "pairs": 3},
        written={"Hemorrhagic_049_000": LESION},
    ),
    Case(
        "palette PNG, one white colour, lesion in the transparency",
        zipped(
            lambda: pair(
                "049",
                encode(ct_slice()),
                png(BINARY, colour_type=3, palette=bytes([255] * 6), transparency=bytes([0, 255])),
            )
        ),
        counts={"converted_masks_from_alpha": 1, "pairs": 3},
        written={"Hemorrhagic_049_000": LESION},
    ),
    Case(
        "opaque RGBA mask, red lesion: the alpha is ignored",
        zipped(
            lambda: pair(
                "049",
                encode(ct_slice()),
                encode(
                    np.dstack(
                        [
                            np.zeros((SIDE, SIDE, 2), np.uint8),
                            BINARY * 255,
                            np.full((SIDE, SIDE), 255, np.uint8),
                        ]
                    )
                ),
            )
        ),
        counts={"converted_masks_colour": 1, "converted_masks_from_alpha": 0, "pairs": 3},
        written={"Hemorrhagic_049_000": LESION},
    ),
    Case(
        "colour and alpha that disagree",
        zipped(
            lambda: pair(
                "049",
                encode(ct_slice()),
                encode(
                    np.dstack([np.roll(BINARY, 8, 0)[..., None].repeat(3, 2) * 255, BINARY * 255])
                ),
            )
        ),
        counts={"unreadable_masks": 1, "pairs": 2},
        report=("colour and alpha both vary and disagree on",),
    ),
    Case(
        "white RGB mask without alpha: no background",
        zipped(
            lambda: pair("049", encode(ct_slice()), encode(np.full((SIDE, SIDE, 3), 255, np.uint8)))
        ),
        counts={"unreadable_masks": 1, "pairs": 2},
        report=("every pixel is 255; no background",),
    ),
    Case(
        "label map 0/1/2 as a mask",
        zipped(lambda: pair("049", encode(ct_slice()), encode(BINARY + np.roll(BINARY, 8, 1)))),
        counts={"unreadable_masks": 1, "pairs": 2},
        report=("values 0..2 give no lesion above the threshold 127",),
    ),
    Case(
        "image with an alpha channel: alpha ignored",
        zipped(
            lambda: pair(
                "049", encode(np.dstack([ct_slice()] * 3 + [BINARY * 255])), encode(BINARY * 255)
            )
        ),
        counts={"converted_images_alpha_ignored": 1, "converted_images_colour": 0, "pairs": 3},
        image=("Hemorrhagic_049_000", ct_slice()),
    ),
]

RUNNER = """
import json, resource, sys
from pathlib import Path
from pipeline.data.extract import extract_archive
from pipeline.io import DataError
from pipeline.params import ExtractParams

workspace = Path(sys.argv[1])
error = None
try:
    extract_archive(
        ExtractParams(**json.loads(sys.argv[2])),
        workspace / "data" / "extracted",
        workspace / "reports" / "extract_report.txt",
        workspace / "metrics" / "extract.json",
    )
except DataError as exception:
    error = str(exception)
# This process reads the archive, worker processes (extract.workers) decode: the largest.
usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
peak_mb = max(usage.ru_maxrss for usage in usages) / 1024
print(json.dumps({"error": error, "peak_mb": peak_mb}))
"""


def run_extract(workspace: Path, params: dict, measured: bool) -> tuple[str | None, float | None]:
    """Run extract into `workspace`: the fatal error (or None) and the peak RSS in MB when
    `measured` (then in a subprocess, so that the peak is this run's alone: of the process
    that reads the archive or of a worker that decodes, whichever is larger)."""
    extract = project_params({"extract": params}).extract
    if measured:
        complete = json.dumps(extract.model_dump())
        result = subprocess.run(
            [sys.executable, "-c", RUNNER, str(workspace), complete],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=TIME_BOUND_S,
        )
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout.splitlines()[-1])
        return outcome["error"], outcome["peak_mb"]
    try:
        extract_archive(
            extract,
            workspace / "data" / "extracted",
            workspace / "reports" / "extract_report.txt",
            workspace / "metrics" / "extract.json",
        )
    except DataError as error:
        return str(error), None
    return None, None


@pytest.fixture
def time_bound():
    """Fail a test still running after TIME_BOUND_S (in-process rows; subprocesses have their
    own timeout)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {TIME_BOUND_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TIME_BOUND_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input_to_extract(tmp_path, case, time_bound):
    archive = case.build(tmp_path)
    workspace = tmp_path / "work"
    error, peak_mb = run_extract(workspace, {"archive": str(archive), **case.params}, case.measured)

    if case.measured:
        assert peak_mb < MEMORY_BOUND_MB, f"peak memory {peak_mb:.0f} MB"
    if case.error:
        assert error and re.search(case.error, error), error
        assert not (workspace / "data" / "extracted").exists()
        return
    assert error is None, error
    metrics = json.loads((workspace / "metrics" / "extract.json").read_text())
    report = (workspace / "reports" / "extract_report.txt").read_text()
    for key, value in case.counts.items():
        assert metrics[key] == value, (key, metrics[key], report)
    # Every file is written in a pair or listed once; the good pairs are always written.
    assert metrics["entries"] == 2 * metrics["pairs"] + sum(metrics[c] for c in PROBLEM_CATEGORIES)
    for line in case.report:
        assert line in report, report
    extracted = workspace / "data" / "extracted"
    manifest = read_manifest(extracted / "manifest.csv")
    assert {"Ischemic_0019983_000", "Ischemic_0019983_001"} <= set(manifest["id"])
    for slice_id, lesion in case.written.items():
        mask = io.read_image(extracted / "masks" / f"{slice_id}.png")
        np.testing.assert_array_equal(mask, lesion.astype(np.uint8) * 255)
    if case.image:
        slice_id, expected = case.image
        np.testing.assert_array_equal(
            io.read_image(extracted / "images" / f"{slice_id}.png"), expected
        )


def test_a_killed_extract_leaves_scratch_that_the_next_run_removes(tmp_path):
    archive = write_zip(tmp_path / "archive.zip", {**base_files(), **good_pair()})
    workspace = tmp_path / "work"
    stale = workspace / "data" / ".extracted.k2j4h5g6.partial"
    (stale / "extracted" / "images").mkdir(parents=True)  # what a kill mid-write leaves
    assert run_extract(workspace, {"archive": str(archive)}, measured=False) == (None, None)
    assert sorted(path.name for path in (workspace / "data").iterdir()) == ["extracted"]


def zip_of_every_pair_problem(folder: Path) -> Path:
    """Good pairs, more than 2 workers hold in flight, around one pair of each problem: files
    refused as they are read (in the reading process) and files that fail to decode (in a
    worker)."""
    path = folder / "archive.zip"
    mask = io.encode_png(BINARY * 255)
    files = {
        **base_files(),
        **pair("050", b"not an image at all", mask),
        **pair("051", png_declaring(30000, 30000), mask),
        **pair("052", encode(ct_slice()), encode(BINARY + np.roll(BINARY, 8, 1))),
        **pair("053", encode(hu_slice()), mask),
        **pair("054", encode(ct_slice()), io.encode_png(disc(48).astype(np.uint8) * 255)),
        **pair("055", encode(ct_slice()), mask),
    }
    for stem in range(12):
        files.update(good_pair("056", f"{stem:03d}"))
    write_zip(path, files)
    patch_declared_size(path, f"{HEM}/images/055/000.png", 500_000_000)
    return append_to_zip(path, good_pair("057"), zipfile.ZIP_BZIP2)


def test_workers_write_the_same_bytes_and_problems_as_one_process(tmp_path):
    archive = zip_of_every_pair_problem(tmp_path)
    outputs = {}
    for workers in (1, 2):
        workspace = tmp_path / f"workers-{workers}"
        params = {"archive": str(archive), "workers": workers}
        assert run_extract(workspace, params, measured=False) == (None, None)
        outputs[workers] = {
            path.relative_to(workspace).as_posix(): path.read_bytes()
            for path in sorted(workspace.rglob("*"))
            if path.is_file()
        }
    assert outputs[1] == outputs[2]  # images, masks, manifest, report and metrics
    metrics = json.loads(outputs[2]["metrics/extract.json"])
    expected = {
        "pairs": 15,
        "unreadable_files": 3,  # 050's image; 057's image and mask (bzip2, when read)
        "oversized_files": 2,  # 051's image (its header); 055's image (its size, when read)
        "unreadable_masks": 1,
        "size_mismatches": 1,
        "dropped_partners": 5,
        "converted_images_16bit": 1,
    }
    assert {key: metrics[key] for key in expected} == expected
    report = outputs[2]["reports/extract_report.txt"].decode()
    for line in (
        f"{HEM}/images/055/000.png: {HEM}/images/055/000.png: declares 500,000,000 bytes",
        f"{HEM}/mask/055/000.png: its partner is unusable; dropped Hemorrhagic_055_000",
        f"{HEM}/mask/057/000.png: {HEM}/mask/057/000.png: compression method 12",
        f"{HEM}/images/050/000.png: {HEM}/images/050/000.png: not a readable image",
        f"{HEM}/mask/050/000.png: its partner is unusable; dropped Hemorrhagic_050_000",
        f"{HEM}/images/051/000.png: {HEM}/images/051/000.png: PNG of 30000x30000",
        f"{HEM}/mask/052/000.png: {HEM}/mask/052/000.png: values 0..2 give no lesion",
        f"{HEM}/images/054/000.png: image 32x32 but mask {HEM}/mask/054/000.png is 48x48",
    ):
        assert line in report, line


# ---------------------------------------------------------------- the new-images command

MODEL_SIDE = 16
# OpenCV's own pixel limit, lowered for the command's run so that an image within
# extract.max_pixels still makes the decoder raise (as 40000x40000 does by default).
DECODER_PIXEL_LIMIT = 1_000_000
COMMAND_MEMORY_BOUND_MB = 1536  # TensorFlow alone takes ~0.5-0.8 GB; the bomb took 13 GB
NEW_IMAGES: dict[str, tuple[bytes | int, str]] = {
    # file name: (content, or size of a sparse file; what stderr must say about it)
    "plain.png": (io.encode_png(ct_slice(48)), "segmented"),
    "ct16.png": (encode(hu_slice()), "converted {path}: 16bit"),
    "bomb.png": (
        png_declaring(30000, 30000, complete=True),
        "skipped {path}: PNG of 30000x30000 = 900,000,000 pixels, over extract.max_pixels = "
        "16,777,216; not decoded",
    ),
    "bomb-jpeg.jpg": (jpeg_declaring(65000, 65000), "skipped {path}: JPEG of 65000x65000"),
    "decoder.png": (png_declaring(2000, 2000), "skipped {path}: the PNG decoder failed"),
    "huge.png": (3 << 30, "skipped {path}: over 135,266,304 bytes"),
    "bitmap.png": (
        cv2.imencode(".bmp", ct_slice())[1].tobytes(),
        "skipped {path}: not a readable image (no PNG or JPEG header)",
    ),
}

COMMAND = """
import atexit, resource, runpy, sys
atexit.register(lambda: print(
    f"peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}", file=sys.stderr
))
sys.argv = ["stages/infer.py", *sys.argv[1:]]
runpy.run_module("stages.infer", run_name="__main__")
"""


@pytest.fixture(scope="module")
def new_images_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """One run of the command over every new image above (TensorFlow starts once)."""
    root = tmp_path_factory.mktemp("new-images")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    inputs = keras.Input((MODEL_SIDE, MODEL_SIDE, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, activation="softmax")(inputs))
    model.save(root / "model.keras")
    folder = write_folder(root / "in", {name: data for name, (data, _) in NEW_IMAGES.items()})
    write_project_params(root / "params.yaml", {"infer": {"batch_size": 2}})
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            COMMAND,
            "--params",
            str(root / "params.yaml"),
            "--model",
            str(root / "model.keras"),
            "--input",
            str(folder),
            "--output",
            str(root / "out"),
        ],
        cwd=root,
        env={
            **os.environ,
            "PYTHONPATH": str(PROJECT_ROOT),
            "OPENCV_IO_MAX_IMAGE_PIXELS": str(DECODER_PIXEL_LIMIT),
        },
        capture_output=True,
        text=True,
        timeout=TIME_BOUND_S,
    )
    return result, folder, root / "out"


def test_new_images_command_goes_on_past_every_bad_file_in_bounded_memory(new_images_run):
    result, _, output = new_images_run
    assert result.returncode == 0, result.stderr
    assert "segmented 2 image(s)" in result.stderr and "skipped 5" in result.stderr
    peak_mb = float(re.search(r"peak_mb=(\d+)", result.stderr).group(1))
    assert peak_mb < COMMAND_MEMORY_BOUND_MB, f"peak memory {peak_mb:.0f} MB"
    assert sorted(path.name for path in (output / "masks").iterdir()) == ["ct16.png", "plain.png"]


@pytest.mark.parametrize("name", list(NEW_IMAGES))
def test_new_images_command_outcome_per_file(new_images_run, name):
    result, folder, output = new_images_run
    expected = NEW_IMAGES[name][1].format(path=folder / name)
    if expected == "segmented":
        assert str(folder / name) not in result.stderr  # neither skipped nor converted
        assert (output / "masks" / name).is_file()
    else:
        assert expected in result.stderr, result.stderr
