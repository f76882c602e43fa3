"""The loop around a model: decode images ahead, batch, call the model, time it.

Images of the next window of samples are decoded by a thread pool while the model works on the
current one (PIL releases the GIL while decoding). Within a window, samples are sorted by size
so each batch pads little; the caller restores dataset order at the end.

Failures stay with their sample: an image that can't be loaded fails only its sample, and a
batch the model fails on is retried one sample at a time before any sample is marked failed.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from model_interface.images import load_image
from model_interface.model_interface import (
    ModelInterface,
    Prediction,
    PredictionRequest,
    predict_isolated,
)
from runners.datasets import Dataset, Sample, TableImage

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """One sample's outcome."""

    sample: Sample
    prompt: str  # as sent to the model (the task built it from the sample)
    prediction: Prediction
    call_s: float | None  # wall time of the model call that answered it (None: never reached)
    batch_size: int  # requests in that call; 0 when the sample failed before the model


@dataclass
class _Loaded:
    sample: Sample
    images: list[Image.Image] | None
    error: str | None

    @property
    def size(self) -> tuple[int, int]:
        pixels = sum(image.width * image.height for image in self.images or [])
        return pixels, len(self.sample.prompt)


def answer_samples(
    model: ModelInterface,
    dataset: Dataset,
    samples: Iterable[Sample],
    *,
    build_request: Callable[[Sample, list[Image.Image]], PredictionRequest] = (
        lambda sample, images: PredictionRequest(images, sample.prompt)
    ),
    batch_size: int,
    sort_window_batches: int = 8,
    prefetch_workers: int = 2,
    max_image_pixels: int | None = None,
    image_cache_mb: float = 256,
) -> Iterator[list[Answer]]:
    """Yield the answers batch by batch, in size-sorted order within each window.

    A model that works on several requests at once (``model.concurrency``, an HTTP client's
    requests in flight) gets at least that many per call, whatever ``batch_size`` says.
    """
    batch_size = max(batch_size, model.concurrency)
    window = batch_size * max(1, sort_window_batches)
    # Two windows' worth of images are in memory anyway (one in use, one decoding ahead);
    # keeping that many pages covers the questions asked about them.
    cache = DecodedImages(int(image_cache_mb * 2**20), 2 * window, max_image_pixels)
    load = _image_loader(dataset, cache)
    with ThreadPoolExecutor(max(1, prefetch_workers), thread_name_prefix="decode") as pool:
        for loaded in _prefetched_windows(samples, window, batch_size, pool, load):
            if sort_window_batches > 1:
                loaded.sort(key=lambda item: item.size)
            for start in range(0, len(loaded), batch_size):
                yield _answer_batch(model, loaded[start : start + batch_size], build_request)


class DecodedImages:
    """The most recently decoded images, by file: document datasets ask several questions about
    each page, so the same file comes round again and again. Bounded by total bytes and by
    count; thread-safe.

    Models get the cached picture itself, so they must not draw on their input images.
    """

    def __init__(self, max_bytes: int, max_images: int, max_pixels: int | None) -> None:
        self.max_bytes, self.max_images, self.max_pixels = max_bytes, max_images, max_pixels
        # (picture, bytes) by the file or table cell it was read from
        self._images: OrderedDict[Path | TableImage, tuple[Image.Image, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, path: Path | TableImage) -> Image.Image:
        with self._lock:
            if (cached := self._images.get(path)) is not None:
                self._images.move_to_end(path)
                return cached[0]
        source = path.read() if isinstance(path, TableImage) else path
        picture = load_image(source, max_pixels=self.max_pixels)
        size = picture.width * picture.height * len(picture.getbands())
        with self._lock:
            if path not in self._images and size <= self.max_bytes:
                self._images[path] = (picture, size)
                self._bytes += size
                while self._bytes > self.max_bytes or len(self._images) > self.max_images:
                    _, (_, evicted_size) = self._images.popitem(last=False)
                    self._bytes -= evicted_size
        return picture


def _image_loader(dataset: Dataset, images_by_path: DecodedImages) -> Callable[[Sample], _Loaded]:
    def load(sample: Sample) -> _Loaded:
        try:
            images = [images_by_path.get(dataset.image_source(entry)) for entry in sample.images]
        except Exception as error:  # one bad image fails its sample, never the run
            return _Loaded(sample, None, f"{type(error).__name__}: {error}")
        return _Loaded(sample, images, None)

    return load


def _prefetched_windows(
    samples: Iterable[Sample],
    window: int,
    batch_size: int,
    pool: ThreadPoolExecutor,
    load: Callable[[Sample], _Loaded],
) -> Iterator[list[_Loaded]]:
    """Windows of loaded samples; the next window is being decoded while one is used.

    The first window is one batch, so the model starts after a few images are decoded rather
    than a whole window. Each task loads a batch's worth of samples: one task per sample would
    cost more in scheduling than small images take to decode.
    """

    def load_all(items: list[Sample]) -> list[_Loaded]:
        return [load(item) for item in items]

    pending: list[Future[list[_Loaded]]] | None = None
    for chunk in itertools.chain(_chunks(samples, batch_size, window), [None]):
        submitted = None
        if chunk is not None:
            parts = [
                chunk[start : start + batch_size] for start in range(0, len(chunk), batch_size)
            ]
            submitted = [pool.submit(load_all, part) for part in parts]
        if pending is not None:
            yield [loaded for future in pending for loaded in future.result()]
        pending = submitted


def _chunks(items: Iterable[Sample], first: int, size: int) -> Iterator[list[Sample]]:
    iterator = iter(items)
    chunk = list(itertools.islice(iterator, first))
    while chunk:
        yield chunk
        chunk = list(itertools.islice(iterator, size))


def _answer_batch(
    model: ModelInterface,
    batch: Sequence[_Loaded],
    build_request: Callable[[Sample, list[Image.Image]], PredictionRequest],
) -> list[Answer]:
    ready = [item for item in batch if item.error is None]
    requests = [build_request(item.sample, item.images or []) for item in ready]
    answers = {
        item.sample.position: Answer(
            item.sample, request.prompt, timed.prediction, timed.call_s, timed.batch_size
        )
        for item, request, timed in zip(
            ready, requests, predict_isolated(model, requests), strict=True
        )
    }
    for item in batch:
        if item.error is not None:
            prompt = build_request(item.sample, []).prompt
            failed = Answer(item.sample, prompt, Prediction("", error=item.error), None, 0)
            answers[item.sample.position] = failed
    return [answers[item.sample.position] for item in batch]
