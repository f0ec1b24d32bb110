"""Accept header parsing and the choice of transfer syntax and media type, without a server."""

from __future__ import annotations

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from drimbox.dicomweb.negotiation import (
    OCTET_STREAM,
    InstanceChoice,
    MediaRange,
    NotAcceptable,
    PixelChoice,
    instance_choices,
    json_media_type,
    parse_accept,
    pixel_choices,
    rendered_media_type,
    syntaxes_for,
)
from drimbox.dicomweb.transcode import can_decode, can_encode, can_transcode, producible_syntaxes
from tests.test_dicomweb_wado import ANS_ACCEPT


def test_ans_accept_header_is_parsed_best_first() -> None:
    ranges = parse_accept(ANS_ACCEPT)
    assert len(ranges) == 10  # the trailing comma adds nothing
    assert [r.q for r in ranges][:3] == [0.9, 0.8, 0.6]
    assert ranges[0].params == {
        "type": "application/dicom",
        "transfer-syntax": "1.2.840.10008.1.2.4.70",
        "boundary": "**",
    }
    assert ranges[-1].params["transfer-syntax"] == ExplicitVRLittleEndian
    # Equal q-values keep the header's order.
    assert [r.params["transfer-syntax"] for r in ranges if r.q == 0.5][:2] == [
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
    ]


def test_accept_syntax_variants() -> None:
    [r] = parse_accept('Multipart/Related ; TYPE = "application/dicom" ; transfer-syntax="*"')
    assert (r.media_type, r.params) == ("multipart/related", {"type": "application/dicom", "transfer-syntax": "*"})
    assert [r.media_type for r in parse_accept(None)] == ["*/*"]
    assert [r.media_type for r in parse_accept("  ")] == ["*/*"]
    assert [r.media_type for r in parse_accept("image/png;q=0, image/jpeg;q=0.1")] == ["image/jpeg"]
    assert parse_accept('multipart/related; type="a,b"; q=0.5')[0].params["type"] == "a,b"
    assert parse_accept("image/png; q=oops")[0].q == 1.0


def test_instance_choices_follow_the_stored_syntax() -> None:
    choices = instance_choices(parse_accept(ANS_ACCEPT), single_part_allowed=False)
    # Lossy syntaxes are never produced, lossless ones only with their codec (pyjpegls for JPEG-LS).
    best_for_native = JPEGLSLossless if can_encode(JPEGLSLossless) else ExplicitVRLittleEndian
    assert next(syntaxes_for(ExplicitVRLittleEndian, choices)).syntax == best_for_native
    assert next(syntaxes_for(ExplicitVRLittleEndian, choices, compress=False)).syntax == ExplicitVRLittleEndian
    assert next(syntaxes_for(JPEGLSLossless, choices)).syntax == JPEGLSLossless  # as stored, q=0.8
    assert next(syntaxes_for(JPEGBaseline8Bit, choices, compress=False)).syntax == JPEGBaseline8Bit  # q=0.5
    star = instance_choices(
        parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*'), single_part_allowed=False
    )
    assert list(syntaxes_for(RLELossless, star)) == [InstanceChoice(RLELossless)]
    default = instance_choices(parse_accept("*/*"), single_part_allowed=False)
    assert default == [InstanceChoice(ExplicitVRLittleEndian)]
    assert next(syntaxes_for(RLELossless, default)).syntax == ExplicitVRLittleEndian  # decompressed
    single = instance_choices(parse_accept("application/dicom"), single_part_allowed=True)
    assert single == [InstanceChoice(ExplicitVRLittleEndian, single_part=True)]


@pytest.mark.parametrize(
    "accept",
    [
        "application/json",
        "application/dicom",
        'multipart/related; type="application/dicom+xml"',
        'multipart/related; type="application/dicom"; transfer-syntax=not-a-uid',
    ],
)
def test_instances_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable, match="application/dicom"):
        instance_choices(parse_accept(accept), single_part_allowed=False)


def test_pixel_choices() -> None:
    octet = parse_accept('multipart/related; type="application/octet-stream"')
    assert pixel_choices(octet, RLELossless, single_part_allowed=False) == [
        PixelChoice("application/octet-stream", ExplicitVRLittleEndian)
    ]
    raw = parse_accept('multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert pixel_choices(raw, RLELossless, single_part_allowed=False) == [
        PixelChoice("application/octet-stream", RLELossless)
    ]
    anything = parse_accept("*/*")
    assert pixel_choices(anything, JPEGLSLossless, single_part_allowed=False) == [
        PixelChoice("image/jls", JPEGLSLossless)
    ]
    assert pixel_choices(anything, ExplicitVRLittleEndian, single_part_allowed=False) == [
        PixelChoice("application/octet-stream", ExplicitVRLittleEndian)
    ]
    jls = parse_accept('multipart/related; type="image/x-jls"')
    assert pixel_choices(jls, JPEGLSLossless, single_part_allowed=False) == [PixelChoice("image/jls", JPEGLSLossless)]
    rle = parse_accept('multipart/related; type="image/dicom-rle"')
    assert pixel_choices(rle, ExplicitVRLittleEndian, single_part_allowed=False) == [
        PixelChoice("image/dicom-rle", RLELossless)  # pydicom encodes RLE itself
    ]
    bare = parse_accept("application/octet-stream")
    assert pixel_choices(bare, ExplicitVRLittleEndian, single_part_allowed=True)[0].single_part
    with pytest.raises(NotAcceptable):
        pixel_choices(
            parse_accept('multipart/related; type="image/jpeg"'), ExplicitVRLittleEndian, single_part_allowed=False
        )
    with pytest.raises(NotAcceptable):
        pixel_choices(parse_accept("image/*"), ExplicitVRLittleEndian, single_part_allowed=False)


def test_json_and_rendered_media_types() -> None:
    assert json_media_type(parse_accept(None)) == "application/dicom+json"
    assert json_media_type(parse_accept("application/json")) == "application/json"
    assert json_media_type(parse_accept("application/dicom+json, application/json")) == "application/dicom+json"
    with pytest.raises(NotAcceptable):
        json_media_type(parse_accept("application/dicom+xml"))
    assert rendered_media_type(parse_accept("image/png;q=0.9, image/jpeg;q=0.5")) == "image/png"
    assert rendered_media_type(parse_accept("image/*")) == "image/jpeg"
    with pytest.raises(NotAcceptable):
        rendered_media_type(parse_accept("image/gif"))


def test_codec_capabilities() -> None:
    assert can_decode(RLELossless) and can_encode(RLELossless)
    assert can_encode(ExplicitVRLittleEndian) and not can_encode(JPEGBaseline8Bit)  # never lossy
    assert can_transcode(JPEGLSLossless, JPEGLSLossless)  # as is, codec or not
    assert can_transcode(JPEGLSLossless, ExplicitVRLittleEndian) == can_decode(JPEGLSLossless)
    assert ExplicitVRLittleEndian in producible_syntaxes()


def test_frames_of_lossy_data_are_never_reencoded_in_a_lossless_syntax() -> None:
    jls = parse_accept('multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80')
    with pytest.raises(NotAcceptable):
        pixel_choices(jls, "1.2.840.10008.1.2.4.50", single_part_allowed=False)  # baseline JPEG: lossy
    assert not can_transcode("1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.90")  # J2K (lossy) → J2K lossless
    assert can_transcode("1.2.840.10008.1.2.4.50", ExplicitVRLittleEndian) == can_decode("1.2.840.10008.1.2.4.50")


def test_the_viewers_accept_gets_the_stored_bitstream_or_native_pixels_without_compress_on_the_fly() -> None:
    viewer = parse_accept(
        'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80, '
        'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.81, '
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1; q=0.5'
    )
    stored_jls = pixel_choices(viewer, "1.2.840.10008.1.2.4.80", single_part_allowed=False, compress=False)
    assert stored_jls[0] == PixelChoice("image/jls", "1.2.840.10008.1.2.4.80")
    native = pixel_choices(viewer, ExplicitVRLittleEndian, single_part_allowed=False, compress=False)
    assert native == [PixelChoice(OCTET_STREAM, ExplicitVRLittleEndian)]  # no encoding on the fly
    if can_encode("1.2.840.10008.1.2.4.80"):
        on_the_fly = pixel_choices(viewer, ExplicitVRLittleEndian, single_part_allowed=False, compress=True)
        assert on_the_fly[0] == PixelChoice("image/jls", "1.2.840.10008.1.2.4.80")


JLS = "1.2.840.10008.1.2.4.80"
J2K = "1.2.840.10008.1.2.4.90"
_JLS_RANGE = f'multipart/related; type="image/jls"; transfer-syntax={JLS}'
_J2K_RANGE = f'multipart/related; type="image/jp2"; transfer-syntax={J2K}'
_NATIVE_RANGE = f'multipart/related; type="application/octet-stream"; transfer-syntax={ExplicitVRLittleEndian}'
# The viewer's two Accept headers (dicomweb.js frameAccept): on a fast link every form at the same weight, on a slow
# one uncompressed weighted below what it decodes.
FAST = parse_accept(f"{_JLS_RANGE}, {_J2K_RANGE}, {_NATIVE_RANGE}")
SLOW = parse_accept(f"{_JLS_RANGE}, {_J2K_RANGE}, {_NATIVE_RANGE}; q=0.5")


@pytest.mark.skipif(not can_encode(JLS), reason="no JPEG-LS encoder (pyjpegls)")
def test_auto_encodes_uncompressed_frames_only_for_a_client_that_weights_a_compressed_syntax_higher() -> None:
    def best(ranges: list[MediaRange], stored: str, compress: bool | str) -> PixelChoice:
        return pixel_choices(ranges, stored, single_part_allowed=False, compress=compress)[0]

    # Uncompressed stored: a slow-link viewer gets JPEG-LS, a fast-link one the stored values (no box CPU).
    assert best(SLOW, ExplicitVRLittleEndian, "auto") == PixelChoice("image/jls", JLS)
    assert best(FAST, ExplicitVRLittleEndian, "auto") == PixelChoice(OCTET_STREAM, ExplicitVRLittleEndian)
    # true keeps its meaning (the client's order), false never encodes.
    assert best(FAST, ExplicitVRLittleEndian, True) == PixelChoice("image/jls", JLS)
    assert best(SLOW, ExplicitVRLittleEndian, False) == PixelChoice(OCTET_STREAM, ExplicitVRLittleEndian)
    # Stored compressed: as stored on either link, never re-encoded into the other lossless syntax.
    assert best(SLOW, J2K, "auto") == PixelChoice("image/jp2", J2K)
    assert best(SLOW, JLS, "auto") == PixelChoice("image/jls", JLS)
    # Stored lossy: never to a lossless syntax; decoded to uncompressed as before.
    assert best(SLOW, "1.2.840.10008.1.2.4.50", "auto").syntax == ExplicitVRLittleEndian
    # A client that accepts JPEG-LS only is served rather than refused.
    assert best(parse_accept(_JLS_RANGE), ExplicitVRLittleEndian, "auto") == PixelChoice("image/jls", JLS)


@pytest.mark.skipif(not can_encode(JLS), reason="no JPEG-LS encoder (pyjpegls)")
def test_auto_encodes_whole_instances_by_the_same_weights() -> None:
    def first(accept: str, compress: bool | str) -> str:
        choices = instance_choices(parse_accept(accept), single_part_allowed=False)
        return next(syntaxes_for(ExplicitVRLittleEndian, choices, compress=compress)).syntax

    prefers_jls = f'multipart/related; type="application/dicom"; transfer-syntax={JLS}, multipart/related; type="application/dicom"; q=0.5'
    equal = f'multipart/related; type="application/dicom"; transfer-syntax={JLS}, multipart/related; type="application/dicom"'
    assert first(prefers_jls, "auto") == JLS
    assert first(equal, "auto") == ExplicitVRLittleEndian
    assert first(equal, True) == JLS
    assert first(prefers_jls, False) == ExplicitVRLittleEndian
