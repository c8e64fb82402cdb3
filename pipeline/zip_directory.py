"""The central directory of an untrusted zip, checked before zipfile parses it.

zipfile reads a zip's whole central directory at once and keeps an object of about 0.6 kB per
member, whatever the members' sizes: 1,000,000 empty members (a 120 MB file) took 593 MB and
18.6 s to open, before any cap on member sizes could apply. `read_central_directory` refuses
such a directory first; extract and the new-images command both call it, with
`extract.max_entries`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.io import DataError

# Central directory bytes allowed per entry of extract.max_entries: a 46-byte header, then
# the name, extra field and comment (the Kaggle archive's names are about 120 bytes).
DIRECTORY_BYTES_PER_ENTRY = 512


def read_central_directory(path: Path, max_entries: int) -> tuple[int, bytearray]:
    """Where the central directory starts, and its bytes, read as zipfile itself would;
    DataError when the end record declares more than `max_entries` entries or more than
    DIRECTORY_BYTES_PER_ENTRY bytes an entry (checked before reading it), or when it holds
    more records than that (the declared count may lie). Relies on zipfile's `_EndRecData`,
    unchanged since Python 3.2."""
    with path.open("rb") as file:
        end = zipfile._EndRecData(file)
        if end is None:
            raise DataError(f"{path}: not a readable zip archive (no end record)")
        # Where zipfile itself looks: the directory ends where the end record(s) begin.
        size = end[zipfile._ECD_SIZE]
        declared = end[zipfile._ECD_ENTRIES_TOTAL]
        limit = f"over extract.max_entries = {max_entries:,}; refused before reading it"
        if declared > max_entries or size > max_entries * DIRECTORY_BYTES_PER_ENTRY:
            raise DataError(
                f"{path}: its central directory declares {declared:,} entries in {size:,} "
                f"bytes ({DIRECTORY_BYTES_PER_ENTRY} bytes an entry allowed), {limit}"
            )
        start = end[zipfile._ECD_LOCATION] - size
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
            start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
        file.seek(max(start, 0))
        directory = bytearray(file.read(size))
    records = sum(1 for _ in central_directory_records(directory))
    if records > max_entries:
        raise DataError(f"{path}: its central directory holds {records:,} entries, {limit}")
    return start, directory


def central_directory_records(directory: bytearray) -> Iterator[tuple[int, int, bytes]]:
    """Each central directory record's position, flags and raw name."""
    position = 0
    while position + 46 <= len(directory) and directory[position : position + 4] == b"PK\x01\x02":
        flags, name_length, extra_length, comment_length = (
            int.from_bytes(directory[position + at : position + at + 2], "little")
            for at in (8, 28, 30, 32)
        )
        yield position, flags, bytes(directory[position + 46 : position + 46 + name_length])
        position += 46 + name_length + extra_length + comment_length
