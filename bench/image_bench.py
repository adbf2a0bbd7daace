"""Benchmark the image paths against what the disk and qemu-img do alone, in the same run.

upload    ``PUT /api/v1/images/{id}/file`` of a qcow2 image (streamed to the API's image
          directory, hashed, fsynced, renamed). Baseline: copying the file on the same file
          system with an fsync (``cp`` then ``sync``-equivalent), what any upload must at least do.
fetch     a hypervisor's cache filling from the API (agents/images/cache.py ``ImageCache.base``):
          ``GET /images/{id}/download`` with a download token, size and sha256 checked, fsynced.
          Baseline: the same GET with the body read and thrown away (what HTTP alone costs).
capture   ``vm.capture``'s work (``ImageCache.capture`` then ``upload``): ``qemu-img convert``
          flattens an overlay and its base into a qcow2, which is hashed and streamed to
          ``PUT /images/{id}/upload`` with an upload token. Baseline: ``qemu-img convert`` alone.

The API runs as its own process (``python -m cloudland_api``, SQLite, no tree), as
``cloudland up`` runs it. The image is a qcow2 with ``--mib`` MiB of data written into it
(a pattern, so nothing compresses or is sparse). Each figure is the median of ``--runs``.
Prints a Markdown table for the README.

    make bench BENCH=image
    .venv/bin/python bench/image_bench.py [--mib 512] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import update

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_bench import Api  # noqa: E402 (the API as its own process, logged in)

from cloudland_agents.images.cache import ImageCache  # noqa: E402
from cloudland_agents.images.source import ImageSource, ImageTarget  # noqa: E402
from cloudland_api.db import make_engine  # noqa: E402
from cloudland_api.models import Image  # noqa: E402
from cloudland_api.security import UPLOAD_AUDIENCE, issue_image_token, load_signing_key  # noqa: E402

MIB = 1 << 20


def median_seconds(runs: int, work: Callable[[int], None], setup: Callable[[int], None] | None = None) -> float:
    """The median wall time of ``work(i)`` over ``runs`` runs (``setup(i)`` untimed before each).

    Each run starts with no dirty pages (``sync``), so no run pays for an earlier one's writeback.
    """
    times = []
    for i in range(runs):
        if setup is not None:
            setup(i)
        os.sync()
        start = time.perf_counter()
        work(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_image(path: Path, mib: int) -> None:
    """A qcow2 of ``mib`` MiB virtual size, every MiB written with a pattern."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{mib}M"], check=True, timeout=60)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {mib}M", str(path)], check=True,
                   stdout=subprocess.DEVNULL, timeout=600)


def copy_with_fsync(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    with open(dest, "rb+") as out:
        os.fsync(out.fileno())


def measure(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    image = work / "image.qcow2"
    make_image(image, args.mib)
    size = image.stat().st_size
    sha256 = hashlib.sha256(image.read_bytes()).hexdigest()
    api = Api(work / "api", f"sqlite:///{work / 'api' / 'cloudland.db'}", root_endpoint="")
    rows: list[dict[str, Any]] = []
    try:
        assert api.http is not None
        key = load_signing_key(api.state_dir)
        ids: list[int] = []

        def upload(i: int) -> None:
            created = api.call("POST", "/images", {"name": f"up-{i}", "disk_format": "qcow2"})
            with open(image, "rb") as body:
                reply = api.http.put(f"/images/{created['id']}/file", content=body,  # type: ignore[union-attr]
                                     headers={"Content-Type": "application/octet-stream",
                                              "Content-Length": str(size), "X-Image-Sha256": sha256})
            assert reply.status_code == 200, reply.text
            ids.append(created["id"])

        rows.append({"what": "upload (`PUT /images/{id}/file`)",
                     "seconds": median_seconds(args.runs, upload),
                     "baseline": "copy + fsync, same file system",
                     "baseline_seconds": median_seconds(args.runs, lambda i: copy_with_fsync(image, work / f"cp-{i}"))})

        url = f"{api.base}/api/v1/images/{ids[0]}/download"
        token = issue_image_token(key, ids[0], 3600)
        caches = [ImageCache(work / f"cache-{i}", 1) for i in range(args.runs)]

        def fetch(i: int) -> None:
            caches[i].base(ImageSource(ids[0], sha256, size, "qcow2", url, token))

        def bare_get(_i: int) -> None:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=60) as response:
                while response.read(MIB):
                    pass

        rows.append({"what": "hypervisor fetch (`ImageCache.base`: download, verify, fsync)",
                     "seconds": median_seconds(args.runs, fetch),
                     "baseline": "the same GET, body discarded",
                     "baseline_seconds": median_seconds(args.runs, bare_get)})

        # Capture: an overlay on the cached base, flattened and uploaded into a "saving" image.
        cache = caches[0]
        base = cache.path_of(ImageSource(ids[0], sha256, size, "qcow2", url, token))
        overlay = cache.create_overlay(base, work / "vm-disk.qcow2")
        engine = make_engine(f"sqlite:///{work / 'api' / 'cloudland.db'}")
        saving: list[int] = []

        def new_saving_image(i: int) -> None:
            created = api.call("POST", "/images", {"name": f"cap-{i}", "disk_format": "qcow2"})
            with engine.begin() as conn:  # what POST /instances/{id}/capture leaves, without a VM
                conn.execute(update(Image).where(Image.id == created["id"]).values(status="saving"))
            saving.append(created["id"])

        def capture(i: int) -> None:
            dest = work / f"capture-{i}.qcow2"
            _size, digest = cache.capture(overlay, dest, "qcow2")
            upload_url = f"{api.base}/api/v1/images/{saving[i]}/upload"
            cache.upload(dest, ImageTarget(saving[i], "qcow2", upload_url,
                                           issue_image_token(key, saving[i], 3600, UPLOAD_AUDIENCE)), digest)

        def convert(i: int) -> None:
            subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", str(overlay),
                            str(work / f"convert-{i}.qcow2")], check=True, timeout=600)

        rows.append({"what": "capture (`vm.capture`: convert, hash, upload)",
                     "seconds": median_seconds(args.runs, capture, new_saving_image),
                     "baseline": "`qemu-img convert` alone",
                     "baseline_seconds": median_seconds(args.runs, convert)})
        for i in saving:
            assert api.call("GET", f"/images/{i}")["status"] == "active"
        engine.dispose()
    finally:
        api.stop()
    for row in rows:
        row["mib"] = size / MIB
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=512, help="data in the image, MiB")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median is shown)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cloudland-image-bench-") as tmp:
        rows = measure(args, Path(tmp))
    print(f"\nA qcow2 image of {rows[0]['mib']:,.0f} MiB, median of {args.runs} runs, API on SQLite:\n")
    print("| operation | s | MiB/s | baseline | baseline MiB/s | vs baseline |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        rate, base_rate = r["mib"] / r["seconds"], r["mib"] / r["baseline_seconds"]
        print(f"| {r['what']} | {r['seconds']:.2f} | **{rate:,.0f}** | {r['baseline']} | {base_rate:,.0f} "
              f"| {rate / base_rate:.2f}× |")
    print(f"\nload average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
          f"on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
