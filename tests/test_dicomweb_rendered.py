"""Rendered and thumbnail resources: JPEG and PNG that Pillow decodes, at the asked viewport and window."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

from tests.support.dicomweb import MULTIFRAME_SERIES, MULTIFRAME_STUDY, RLE_SOP, SampleData, serve, write_samples
from tests.support.folder_backend import FolderBackend


@pytest.fixture
def samples(tmp_path: Path) -> SampleData:
    return write_samples(tmp_path / "data")


@pytest.fixture
async def server(samples: SampleData) -> AsyncIterator[str]:
    backend = await FolderBackend.open(samples.root)
    async with serve(backend) as url:
        yield url


async def fetch(url: str, accept: str = "image/jpeg", **params: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params, headers={"Accept": accept}) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def instance_url(server: str, samples: SampleData, series: int = 0, instance: int = 1) -> str:
    spec = samples.spec
    return (
        f"{server}/dicom-web/studies/{spec.study_uid}/series/{spec.series_uid(series)}"
        f"/instances/{spec.sop_uid(series, instance)}"
    )


@pytest.mark.parametrize(("accept", "fmt"), [("image/jpeg", "JPEG"), ("image/png", "PNG"), ("*/*", "JPEG")])
async def test_rendered_decodes_at_viewport(server: str, samples: SampleData, accept: str, fmt: str) -> None:
    status, content_type, body = await fetch(instance_url(server, samples) + "/rendered", accept, viewport="32,32")
    assert status == 200 and content_type == ("image/jpeg" if accept == "*/*" else accept)
    image = Image.open(io.BytesIO(body))
    assert (image.format, image.size, image.mode) == (fmt, (32, 32), "L")


async def test_rendered_windowing_and_aspect(server: str, samples: SampleData) -> None:
    url = instance_url(server, samples) + "/rendered"
    _, _, body = await fetch(url, "image/png")
    native = np.asarray(Image.open(io.BytesIO(body)))
    assert native.shape == (64, 64)
    # The instance's own window (40/400): air black, brain mid-grey.
    assert native[0, 0] == 0 and 100 < native[32, 32] < 156
    _, _, body = await fetch(url, "image/png", window="-1000,10,linear")  # only air is inside this window
    narrow = np.asarray(Image.open(io.BytesIO(body)))
    assert narrow[32, 32] == 255 and narrow[0, 0] < 255
    _, _, body = await fetch(url, "image/png", window="40,400,sigmoid")
    assert np.asarray(Image.open(io.BytesIO(body)))[0, 0] < 10
    _, _, body = await fetch(url, "image/png", viewport="40,20")  # fits inside, keeps the square
    assert Image.open(io.BytesIO(body)).size == (20, 20)
    _, _, small = await fetch(url, quality="10")
    _, _, large = await fetch(url, quality="95")
    assert len(small) < len(large)


async def test_thumbnails_and_rendered_frames(server: str, samples: SampleData) -> None:
    spec = samples.spec
    study = f"{server}/dicom-web/studies/{spec.study_uid}"
    for url in (f"{study}/thumbnail", f"{study}/series/{spec.series_uid(1)}/thumbnail"):
        status, _, body = await fetch(url)
        assert status == 200 and Image.open(io.BytesIO(body)).size == (128, 128)
    status, _, body = await fetch(f"{study}/thumbnail", viewport="50,50")
    assert status == 200 and Image.open(io.BytesIO(body)).size == (50, 50)
    frames = f"{server}/dicom-web/studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances/{RLE_SOP}/frames"
    rendered = []
    for frame in ("1", "2"):  # slices 1 and 3 of the phantom are mirror images, equal
        status, _, body = await fetch(f"{frames}/{frame}/rendered", "image/png")
        assert status == 200
        rendered.append(np.asarray(Image.open(io.BytesIO(body))))
    assert not np.array_equal(rendered[0], rendered[1])  # different slices, decoded from RLE


@pytest.mark.parametrize(
    ("suffix", "accept", "params", "status"),
    [
        ("/rendered", "image/gif", {}, 406),
        ("/rendered", "image/jpeg", {"window": "40"}, 400),
        ("/rendered", "image/jpeg", {"window": "40,0"}, 400),
        ("/rendered", "image/jpeg", {"window": "40,400,cubic"}, 400),
        ("/rendered", "image/jpeg", {"viewport": "0,10"}, 400),
        ("/rendered", "image/jpeg", {"viewport": "wide"}, 400),
        ("/rendered", "image/jpeg", {"quality": "101"}, 400),
        ("/frames/2/rendered", "image/jpeg", {}, 404),
        ("/frames/1,2/rendered", "image/jpeg", {}, 400),
    ],
)
async def test_rendered_errors(
    server: str, samples: SampleData, suffix: str, accept: str, params: dict[str, str], status: int
) -> None:
    got, content_type, _ = await fetch(instance_url(server, samples) + suffix, accept, **params)
    assert (got, content_type) == (status, "application/json; charset=utf-8")
