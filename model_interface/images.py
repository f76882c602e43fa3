"""One loader for every image input a model may be given.

Callers pass whatever they have (a PIL image, a file path, raw bytes, a numpy array); backends
call :func:`load_image` and always get an 8-bit RGB ``PIL.Image`` with its EXIF orientation
applied. Pictures that PIL's own ``convert("RGB")`` would get wrong are converted first:

* 16-bit and 32-bit integer pictures (16-bit PNG and TIFF scans) are scaled to 8 bits, not
  clipped (clipping turns almost every pixel white);
* floating-point pictures with values in [0, 1] are scaled to [0, 255] (else they turn black);
* transparent pixels are laid on white paper (dropping the alpha channel shows whatever colour
  the transparent pixels happen to hold, often black).
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile, ImageOps

ImageInput = Image.Image | str | os.PathLike | bytes | bytearray | Any
"""A PIL image, a file path, encoded image bytes, or an ``HxW`` / ``HxWxC`` uint8 array."""

EXIF_ORIENTATION = 0x0112

# PIL's own default bomb limit (~89.5 MP); documents scanned at 600 dpi stay well below it.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageLoadError(ValueError):
    """An image input could not be turned into an RGB picture. The message names the input."""


def describe_image_input(image: object) -> str:
    """A short human-readable name for an image input, for error messages and logs."""
    if isinstance(image, (str, os.PathLike)):
        return f"file {os.fspath(image)!r}"
    if isinstance(image, (bytes, bytearray)):
        return f"<{len(image)} bytes>"
    if isinstance(image, Image.Image):
        return f"<PIL image {image.mode} {image.width}x{image.height}>"
    shape = getattr(image, "shape", None)
    if shape is not None:
        return f"<array shape={tuple(shape)} dtype={getattr(image, 'dtype', '?')}>"
    return f"<{type(image).__name__}>"


def load_image(image: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return ``image`` as a fully decoded RGB ``PIL.Image``.

    Raises :class:`ImageLoadError` for a missing, empty, corrupt or truncated file, an unknown
    type, or a picture larger than ``max_pixels`` (a guard against decompression bombs;
    ``None`` turns our guard off, PIL's own hard limit still applies).
    """
    what = describe_image_input(image)
    try:
        picture = _open(image)
        # The limit guards decoding; a picture already decoded in memory has no bomb left in it.
        not_decoded = isinstance(picture, ImageFile.ImageFile) and bool(picture.tile)
        too_large = max_pixels is not None and picture.width * picture.height > max_pixels
        if too_large and not_decoded:
            raise ImageLoadError(
                f"image {what} is {picture.width}x{picture.height} = "
                f"{picture.width * picture.height:,} pixels, over the limit of {max_pixels:,}; "
                "raise max_pixels if the image is trusted"
            )
        if picture.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose copies otherwise
            picture = ImageOps.exif_transpose(picture)
        if picture.mode != "RGB":
            picture = _to_rgb(picture)
        picture.load()
        return picture
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(f"image {what} does not exist") from None
    except IsADirectoryError:
        raise ImageLoadError(f"image {what} is a directory, not an image file") from None
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"image {what} is too large: {error}") from None
    except (OSError, SyntaxError, ValueError, TypeError) as error:
        raise ImageLoadError(f"cannot load image {what}: {error}") from error


def _open(image: ImageInput) -> Image.Image:
    with warnings.catch_warnings():
        # We apply our own pixel limit right after opening; PIL's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, (str, os.PathLike)):
            data = _read_regular_file(Path(image))
            if not data:
                raise ImageLoadError(f"image {describe_image_input(image)} is an empty file")
            return Image.open(io.BytesIO(data))
        if isinstance(image, (bytes, bytearray)):
            if not image:
                raise ImageLoadError("image <0 bytes> is empty")
            return Image.open(io.BytesIO(image))
        if hasattr(image, "__array_interface__"):
            return Image.fromarray(image)
    raise ImageLoadError(
        f"unsupported image input {describe_image_input(image)}: pass a PIL image, a file path, "
        "encoded image bytes, or a uint8 numpy array"
    )


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes, read from the header alone (nothing decoded)."""
    if not data:
        raise ImageLoadError("image <0 bytes> is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as picture:
                return picture.size
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"image {describe_image_input(data)} is too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"cannot read image {describe_image_input(data)}: {error}") from None


def _read_regular_file(path: Path) -> bytes:
    """The file's bytes; anything but a regular file (a FIFO, a device) is refused unread.

    Opening with O_NONBLOCK makes opening a FIFO with no writer return at once instead of
    waiting for one; the type is then checked on the open descriptor, so nothing can be swapped
    in between the check and the read.
    """
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            raise ImageLoadError(
                f"image {describe_image_input(path)} is not a regular file (a FIFO, socket or "
                "device); image paths must name image files"
            )
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(descriptor)


def _to_rgb(picture: Image.Image) -> Image.Image:
    """8-bit RGB, scaling deep pictures and laying transparent ones on white (module docstring)."""
    if picture.mode in ("I", "F") or picture.mode.startswith("I;16"):
        return _deep_to_8_bit(picture).convert("RGB")
    if picture.mode == "P" and "transparency" in picture.info:
        picture = picture.convert("RGBA")
    if picture.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        paper = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, picture.convert("RGBA")).convert("RGB")
    return picture.convert("RGB")


def _deep_to_8_bit(picture: Image.Image) -> Image.Image:
    """A 16/32-bit integer or floating-point grayscale picture as 8-bit "L".

    Integer pictures are scaled by the bit depth their values need (16-bit PNGs and TIFFs hold
    0..65535; a 32-bit "I" picture holding 0..255 is left as it is). Floating-point pictures
    with every value in [0, 1] are scaled to [0, 255]; others are clipped to [0, 255].
    """
    import numpy as np  # only deep pictures pay for the import

    values = np.asarray(picture).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if picture.mode == "F":
        scale = 255.0 if low >= 0 and high <= 1 else 1.0
    elif high <= 255:
        scale = 1.0
    elif high <= 65535:
        scale = 255 / 65535
    else:
        scale = 255 / high
    eight_bit = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit)
