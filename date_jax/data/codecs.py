"""Encoded image bytes -> RGB pixels (OpenCV, as mmcv reads images), and the channel count the file stores.

An empty or undecodable stream raises `UnreadableImageError`: the loader skips and counts such an image, the Python API
passes the error on. Nothing here ever turns a bad file into pixels.
"""
from __future__ import annotations

import io

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}          # IHDR colour type -> channels (palette decodes to RGB)
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}   # SOF0-SOF15 (not DHT, JPG, DAC)


class UnreadableImageError(ValueError):
    """An image file or stream that is empty, missing or not decodable."""


def _jpeg_components(data: bytes) -> int | None:
    """Components of a JPEG's frame header (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK), walking the marker segments; None if
    the stream ends first."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:            # fill byte
            i += 1
        elif marker in JPEG_FRAME_MARKERS:
            return data[i + 9]
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:   # TEM, RSTn: no length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def stored_channels(data: bytes) -> int:
    """Channels an encoded image stores (1 gray, 2 gray + alpha, 3 RGB or palette, 4 RGBA or CMYK): read from the
    JPEG frame or PNG header, else by Pillow."""
    from PIL import Image

    if data[:2] == b"\xff\xd8":
        components = _jpeg_components(data)
        if components is not None:
            return components
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and data[25] in PNG_CHANNELS:
        return PNG_CHANNELS[data[25]]
    try:
        with Image.open(io.BytesIO(data)) as image:
            return 3 if image.mode == "P" else len(image.getbands())
    except (OSError, ValueError):     # a format Pillow does not know: OpenCV decoded it to 3 channels
        return 3


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded JPEG/PNG/BMP bytes -> uint8 [h,w,3] RGB (EXIF orientation ignored, so pixels stay in the frame the
    annotations use). Grayscale is replicated, alpha dropped and CMYK converted; empty or bad bytes raise
    `UnreadableImageError`."""
    import cv2

    if not data:
        raise UnreadableImageError("empty (0 bytes)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.size == 0:
        raise UnreadableImageError(f"{len(data)} bytes that do not decode as an image")
    return image


def read_file(path: str) -> bytes:
    """The bytes of the image file `path`; a missing, unreadable or empty file raises `UnreadableImageError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UnreadableImageError(f"{path}: {e.strerror or e}") from e
    if not data:
        raise UnreadableImageError(f"{path}: empty file (0 bytes)")
    return data
