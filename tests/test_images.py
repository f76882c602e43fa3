from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_interface.images import ImageLoadError, load_image


def _png_bytes(picture: Image.Image, **save_options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=save_options.pop("format", "PNG"), **save_options)
    return buffer.getvalue()


@pytest.fixture
def red_png(tmp_path: Path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (6, 4), (255, 0, 0)).save(path)
    return path


def test_every_input_kind_gives_the_same_rgb_picture(red_png: Path) -> None:
    expected = Image.open(red_png).convert("RGB").tobytes()
    inputs = [
        Image.open(red_png),
        str(red_png),
        red_png,
        red_png.read_bytes(),
        bytearray(red_png.read_bytes()),
        np.asarray(Image.open(red_png)),
    ]
    for image in inputs:
        picture = load_image(image)
        assert picture.mode == "RGB"
        assert picture.size == (6, 4)
        assert picture.tobytes() == expected


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_other_modes_become_rgb(mode: str) -> None:
    assert load_image(Image.new(mode, (3, 3))).mode == "RGB"


def test_grayscale_array_becomes_rgb() -> None:
    picture = load_image(np.full((5, 7), 200, dtype=np.uint8))
    assert picture.size == (7, 5)
    assert picture.getpixel((0, 0)) == (200, 200, 200)


def test_exif_orientation_is_applied() -> None:
    # A 6x2 landscape JPEG tagged "rotate 90 degrees" (orientation 6) must come out 2x6.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _png_bytes(Image.new("RGB", (6, 2), (0, 0, 255)), format="JPEG", exif=exif)
    assert load_image(data).size == (2, 6)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageLoadError, match=r"nope\.png.*does not exist"):
        load_image(missing)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.png.*empty file"):
        load_image(str(empty))
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


def test_corrupt_file_names_the_path(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageLoadError, match=r"cannot load image file .*corrupt\.jpg"):
        load_image(corrupt)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(noise))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"truncated\.png"):
        load_image(truncated)


def test_pixel_limit_guards_against_bombs(red_png: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"6x4 = 24 pixels, over the limit of 10"):
        load_image(red_png, max_pixels=10)
    assert load_image(red_png, max_pixels=24).size == (6, 4)
    assert load_image(red_png, max_pixels=None).size == (6, 4)


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    # A 144-megapixel 1-bit PNG is a few kB on disk; the default limit must refuse it from its
    # header alone, without decoding it.
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)
    with pytest.raises(ImageLoadError, match=r"bomb\.png.*over the limit of 89,478,485"):
        load_image(bomb)


def test_unsupported_type_says_what_is_accepted() -> None:
    with pytest.raises(ImageLoadError, match=r"unsupported image input <int>.*file path"):
        load_image(42)
