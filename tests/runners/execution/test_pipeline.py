"""The batch pipeline's own parts: the decoded-image cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from model_interface.images import ImageLoadError
from runners.execution.pipeline import DecodedImages


@pytest.fixture
def pages(tmp_path: Path) -> list[Path]:
    paths = []
    for index in range(4):
        path = tmp_path / f"page{index}.png"
        Image.new("RGB", (10, 10), (index, 0, 0)).save(path)
        paths.append(path)
    return paths


def test_a_page_asked_about_again_is_decoded_once(pages) -> None:
    cache = DecodedImages(max_bytes=10_000, max_images=8, max_pixels=None)
    first = cache.get(pages[0])
    assert cache.get(pages[0]) is first
    assert first.getpixel((0, 0)) == (0, 0, 0)


def test_the_cache_is_bounded_by_count_and_by_bytes(pages) -> None:
    by_count = DecodedImages(max_bytes=10_000, max_images=2, max_pixels=None)
    first = by_count.get(pages[0])
    by_count.get(pages[1])
    by_count.get(pages[2])  # evicts the least recently used page, pages[0]
    assert by_count.get(pages[0]) is not first

    by_bytes = DecodedImages(max_bytes=600, max_images=100, max_pixels=None)  # two 300-byte pages
    first = by_bytes.get(pages[0])
    by_bytes.get(pages[1])
    assert by_bytes.get(pages[0]) is first  # still cached, and now the most recent
    by_bytes.get(pages[2])  # evicts pages[1]
    assert by_bytes.get(pages[0]) is first


def test_the_pixel_limit_still_applies(pages) -> None:
    cache = DecodedImages(max_bytes=10_000, max_images=8, max_pixels=50)
    with pytest.raises(ImageLoadError, match="over the limit of 50"):
        cache.get(pages[0])
