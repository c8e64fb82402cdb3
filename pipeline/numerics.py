"""Floating-point paths that give the same bits on every x86-64 machine.

OpenCV picks SIMD code paths at run time by CPU (SSE4.1, AVX2, AVX512_SKX) and by Intel IPP.
For integer images they are bit-exact, but its float filters and resizes round differently
per path: with `cv2.setUseOptimized(False)` every float32 `GaussianBlur` and `resize` of the
phantom changed (132 of 132 and 76 of 76 calls on a 128 px phantom), and so, at the rare
pixels where a value sits next to a rounding boundary, did the PNG bytes. That is how two
machines of one kind wrote phantom archives two bytes apart. Its thread count and our worker
count change nothing (measured).

`baseline_opencv` runs a block on OpenCV's baseline paths (SSE3, compiled into the wheel for
every x86-64 CPU) with IPP off; on these small float images it costs nothing measurable
(0.5 ms against 0.9 ms per 512 px blur at sigma 0.8, 3.5 against 3.8 ms at sigma 4).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np


@contextmanager
def baseline_opencv() -> Iterator[None]:
    """OpenCV's baseline code paths (no CPU dispatch, no IPP) inside the block; also usable
    as a decorator. OpenCV's flag is per process and our stages call it from one thread."""
    previous = cv2.useOptimized()
    cv2.setUseOptimized(False)
    try:
        yield
    finally:
        cv2.setUseOptimized(previous)


# numpy picks its transcendental loops by CPU too. Its float32 sin, cos, exp and log changed
# between the baseline and the AVX2 loop (NPY_DISABLE_CPU_FEATURES=X86_V3, 1M random inputs), and
# a phantom slice's float field with them; its float64 loops agreed. So these compute in float64
# and round once to float32. On AVX-512 machines numpy switches float64 sin, cos and arctan2 to
# other loops again (numpy.lib.introspect.opt_func_info(); untested here, no AVX-512). Such loops
# differ by a few units in the last float64 place at most; a difference that small survives the
# rounding to float32 for about 1 value in 10**8, and that float32 step must then also move an
# 8-bit pixel. Exact polynomial versions (only +, -, *, /) would remove even that, but halved the
# phantom's speed (measured: 4.9 against 10-13 slices/s at 512 px), so they are not used.


def sin_f32(x: np.ndarray) -> np.ndarray:
    return np.sin(x, dtype=np.float64).astype(np.float32)


def cos_f32(x: np.ndarray) -> np.ndarray:
    return np.cos(x, dtype=np.float64).astype(np.float32)


def exp_f32(x: np.ndarray) -> np.ndarray:
    return np.exp(x, dtype=np.float64).astype(np.float32)


def arctan2_f32(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.arctan2(y, x, dtype=np.float64).astype(np.float32)
