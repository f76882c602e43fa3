"""One loader for every image input a model may be given.

Callers pass whatever they have (a PIL image, a file path, raw bytes, a numpy array); backends
call :func:`load_image` and always get an RGB ``PIL.Image`` with its EXIF orientation applied.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

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
        if max_pixels is not None and picture.width * picture.height > max_pixels:
            raise ImageLoadError(
                f"image {what} is {picture.width}x{picture.height} = "
                f"{picture.width * picture.height:,} pixels, over the limit of {max_pixels:,}; "
                "raise max_pixels if the image is trusted"
            )
        if picture.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose copies otherwise
            picture = ImageOps.exif_transpose(picture)
        if picture.mode != "RGB":
            picture = picture.convert("RGB")
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
            # One read instead of stat + open: most inputs are small files read in full anyway.
            data = Path(image).read_bytes()
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
