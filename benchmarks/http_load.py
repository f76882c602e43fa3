"""A bounded load run against ``runners.serve``: good and bad requests mixed, many at once.

    python benchmarks/http_load.py [--model dummy] [--requests 1000] [--concurrency 32]

It starts ``python -m runners.serve model=<model>`` and sends ``--requests`` requests,
``--concurrency`` at a time, one in four of them bad in a different way each: an image over the
pixel limit (a 9000x9000 PNG of 10 kB), too many images, too long a prompt, broken base64, a
body that is not JSON, JSON nested 100 deep, a model the server does not serve, a body over the
size limit. Good requests must all be answered (200), bad ones all refused with a 4xx, and the
server's memory must not grow with what it refused. The last lines are machine-readable:
``load_good_ok``, ``load_bad_4xx`` (shares, 1.0 is right), ``load_requests_per_s``,
``load_server_rss_growth_mb`` (the server's RSS after the run less before it, the run made once
before as a warm-up, so that a leak shows and the allocator's first peak does not), and
``load_health_ms_during_huge_body``: the slowest ``/health`` answer while a 28 MB body of 14
million numbers (under the 32 MB body limit) is sent, parsed and answered; a server that parses
it on its event loop keeps every client waiting for seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from common import print_figures, print_table, served
from PIL import Image

PAGE = Path(__file__).resolve().parents[1] / "data" / "sample_docs" / "images" / "invoice_001.png"
JSON = {"content-type": "application/json"}
HUGE_BODY_VALUES = 14_000_000


def data_url(picture_bytes: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(picture_bytes).decode()}"


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def user(text: str, *urls: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def bodies() -> tuple[list[bytes], dict[str, bytes]]:
    """Good request bodies, and one bad body per way of being bad."""
    page = data_url(PAGE.read_bytes())
    good = [
        json.dumps({"messages": [user(f"Total? ({index})", page)], "max_tokens": 8}).encode()
        for index in range(16)
    ]
    bad = {
        "image over the pixel limit": {
            "messages": [user("?", data_url(png(Image.new("1", (9000, 9000)))))]
        },
        "too many images": {"messages": [user("?", *[page] * 17)]},
        "prompt too long": {"messages": [user("x" * 200_000, page)]},
        "broken base64": {"messages": [user("?", "data:image/png;base64,@@@")]},
        "model not served": {"model": "gpt-4o", "messages": [user("?", page)]},
        "body over the limit": {"messages": [user("?", page)], "padding": "p" * (33 * 2**20)},
    }
    encoded = {name: json.dumps(body).encode() for name, body in bad.items()}
    encoded["not JSON"] = b"{this is not json"
    encoded["nested 100 deep"] = b'{"messages": ' + b"[" * 100 + b"]" * 100 + b"}"
    return good, encoded


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def load(base_url: str, schedule: list[tuple[str, bytes]], concurrency: int) -> list:
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def send(kind: str, body: bytes) -> tuple[str, int]:
            async with slots:
                response = await client.post(
                    f"{base_url}/chat/completions", content=body, headers=JSON
                )
                return kind, response.status_code

        return await asyncio.gather(*(send(kind, body) for kind, body in schedule))


def huge_body() -> bytes:
    """A chat request whose ``messages`` is a list of 14 million zeros: 28 MB of JSON."""
    return b'{"messages": [' + b",".join([b"0"] * HUGE_BODY_VALUES) + b"]}"


async def health_while_answering(base_url: str, body: bytes) -> tuple[list[float], int, float]:
    """The latencies (ms) of ``/health``, asked one after another for as long as the POST of
    ``body`` takes; that POST's status and seconds."""
    root = base_url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=120) as client:
        await client.get(f"{root}/health")  # connected: the first check pays no handshake
        started = time.perf_counter()
        big = asyncio.create_task(
            client.post(f"{base_url}/chat/completions", content=body, headers=JSON)
        )
        latencies = []
        while not big.done():
            asked = time.perf_counter()
            await client.get(f"{root}/health")
            latencies.append((time.perf_counter() - asked) * 1000)
        response = await big
    return latencies, response.status_code, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dummy", help="a conf/model config name")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    good, bad = bodies()
    kinds = itertools.cycle(["good", "good", "good", "bad"])
    bad_cycle, good_cycle = itertools.cycle(bad.items()), itertools.cycle(good)
    schedule = [
        ("good", next(good_cycle)) if next(kinds) == "good" else next(bad_cycle)
        for _ in range(args.requests)
    ]

    with (
        tempfile.TemporaryDirectory() as workdir,
        served(args.model, Path(workdir)) as (
            base_url,
            process,
        ),
    ):
        # Warm-up: the same run once, so that what the allocator keeps after its first peak is
        # not counted as growth; what grows from one run to the next would be a leak.
        asyncio.run(load(base_url, schedule, args.concurrency))
        before = rss_mb(process.pid)
        started = time.perf_counter()
        results = asyncio.run(load(base_url, schedule, args.concurrency))
        elapsed = time.perf_counter() - started
        after = rss_mb(process.pid)
        huge = huge_body()
        health_ms, huge_status, huge_s = asyncio.run(health_while_answering(base_url, huge))

    statuses: dict[str, Counter] = {}
    for kind, status in results:
        statuses.setdefault(kind, Counter())[status] += 1
    print(
        f"\nrunners.serve model={args.model}: {args.requests} requests at concurrency "
        f"{args.concurrency} in {elapsed:.1f} s; server RSS {before:.0f} -> {after:.0f} MB"
    )
    rows = [[kind, dict(sorted(counts.items()))] for kind, counts in statuses.items()]
    print_table(["request", "statuses"], rows)
    print(
        f"/health while a {len(huge) / 1e6:.0f} MB body of {HUGE_BODY_VALUES:,} numbers was "
        f"answered ({huge_status} in {huge_s:.2f} s): {len(health_ms)} checks, slowest "
        f"{max(health_ms):.1f} ms"
    )
    good_results = [status for kind, status in results if kind == "good"]
    bad_results = [status for kind, status in results if kind != "good"]
    print_figures(
        load_good_ok=sum(status == 200 for status in good_results) / len(good_results),
        load_bad_4xx=sum(400 <= status < 500 for status in bad_results) / max(1, len(bad_results)),
        load_requests_per_s=args.requests / elapsed,
        load_server_rss_growth_mb=after - before,
        load_health_ms_during_huge_body=max(health_ms),
    )


if __name__ == "__main__":
    main()
