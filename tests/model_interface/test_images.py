from __future__ import annotations

import io
import os
import threading
import time
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


def test_a_16_bit_scan_is_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    # A 16-bit grayscale gradient over the whole range, saved as PNG and as TIFF.
    gradient = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    for name in ("scan.png", "scan.tif"):
        path = tmp_path / name
        Image.fromarray(gradient).save(path)
        assert Image.open(path).mode.startswith("I")
        picture = np.asarray(load_image(path))
        expected = np.rint(gradient / 257).astype(np.uint8)
        assert np.array_equal(picture[..., 0], expected), name
        assert picture[0, 0, 0] == 0 and picture[0, -1, 0] == 255
        assert picture[0, 128, 0] == 128  # mid-grey stays mid-grey (clipping made it 255)


def test_a_32_bit_integer_picture_holding_8_bit_values_is_left_as_it_is() -> None:
    values = np.array([[0, 100, 255]], dtype=np.int32)
    assert np.asarray(load_image(values))[0, :, 0].tolist() == [0, 100, 255]


def test_a_float_picture_in_0_1_is_scaled_to_0_255() -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert np.asarray(load_image(values))[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_are_laid_on_white(mode: str) -> None:
    # Black text on a transparent page: the transparent pixels hold black, as exporters leave them.
    page = Image.new(mode, (4, 1), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    page.putpixel((1, 0), (0, 0, 0, 255) if mode == "RGBA" else (0, 255))
    picture = load_image(page)
    assert [picture.getpixel((x, 0)) for x in range(3)] == [
        (255, 255, 255),
        (0, 0, 0),
        (255, 255, 255),
    ]


def test_a_palette_picture_with_a_transparent_colour_is_laid_on_white() -> None:
    page = Image.new("P", (2, 1), 0)
    page.putpalette([0, 0, 0, 10, 20, 30])
    page.putpixel((1, 0), 1)
    page.info["transparency"] = 0
    picture = load_image(_png_bytes(page))
    assert picture.getpixel((0, 0)) == (255, 255, 255) and picture.getpixel((1, 0)) == (10, 20, 30)


def test_a_fifo_fails_at_once_instead_of_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    opened, done = [], threading.Event()

    def watch() -> None:
        # Opening a FIFO to write, without blocking, succeeds only while someone has it open to
        # read: a loader that opened it would wait there, and be seen (and freed) here.
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                opened.append(True)
            except OSError:  # ENXIO: no reader
                pass
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with pytest.raises(ImageLoadError, match=r"pipe\.png' is not a regular file"):
        load_image(fifo)
    done.set()
    watcher.join()
    assert not opened


def test_a_device_is_refused_unread() -> None:
    with pytest.raises(ImageLoadError, match=r"'/dev/null' is not a regular file"):
        load_image("/dev/null")


def test_the_pixel_limit_does_not_apply_to_a_picture_already_decoded(red_png: Path) -> None:
    decoded = load_image(red_png)  # what the runner hands a backend, which loads it again
    assert load_image(decoded, max_pixels=10) is decoded
    with pytest.raises(ImageLoadError, match="over the limit of 10"):
        load_image(Image.open(red_png), max_pixels=10)  # opened, not yet decoded
