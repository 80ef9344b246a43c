"""Raster (PNG, JPEG, BMP, TIFF) and NumPy readers, the channel policy and the content hash."""

import contextlib
import gzip
import io
import pickle
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from nibabel.testing import data_path as nibabel_data
from PIL import Image, PngImagePlugin

from medclassify.config import load_schema
from medclassify.io import (DEFAULT_IO_OPTIONS, ReadError, content_hash, detect_format, read_file_samples,
                            read_sample, sample_indices)
from medclassify.io import png_inflate
from medclassify.io.channels import apply_channel_policy
from medclassify.io.raster import read_tiff
from tests.badinput_corpus import png_claiming_size

RNG = np.random.default_rng(0)


def test_default_io_options_match_the_config_schema():
    schema = load_schema()["properties"]["io"]["properties"]
    assert DEFAULT_IO_OPTIONS == {name: spec["default"] for name, spec in schema.items()}


@pytest.mark.parametrize("mode, dtype, shape", [
    ("L", np.uint8, (20, 30)), ("I;16", np.uint16, (20, 30)),
    ("RGB", np.uint8, (20, 30, 3)), ("RGBA", np.uint8, (20, 30, 4)),
])
def test_png_keeps_values_and_bit_depth(tmp_path, mode, dtype, shape):
    pixels = RNG.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    sample = read_sample(tmp_path / "a.png")
    assert sample.pixels.dtype == dtype
    expected = pixels if pixels.ndim == 3 else pixels[:, :, None]
    np.testing.assert_array_equal(sample.pixels, expected[:, :, :3])  # alpha dropped
    assert sample.meta["format"] == "png" and sample.meta["original_shape"] == list(shape)


def _paeth(left, up, upper_left):
    estimate = left + up - upper_left
    d_left, d_up, d_ul = np.abs(estimate - left), np.abs(estimate - up), np.abs(estimate - upper_left)
    return np.where((d_left <= d_up) & (d_left <= d_ul), left, np.where(d_up <= d_ul, up, upper_left))


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def encode_png(pixels, bit_depth, colour_type, *, extra_chunks=(), interlace=0, split_idat=False):
    """Encode a PNG, cycling through the five row filters (an encoder independent of Pillow's).

    ``extra_chunks`` [(kind, body)] go between IHDR and the image data.
    """
    height, width = pixels.shape[:2]
    dtype = ">u2" if bit_depth == 16 else np.uint8
    data = pixels.astype(dtype).reshape(height, -1).view(np.uint8).astype(np.int64)
    bpp = (bit_depth // 8) * (pixels.shape[2] if pixels.ndim == 3 else 1)
    lines = []
    for y in range(height):
        x = data[y]
        up = data[y - 1] if y else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])
        kind = y % 5
        predictor = [0 * x, left, up, (left + up) // 2, _paeth(left, up, upper_left)][kind]
        lines.append(bytes([kind]) + ((x - predictor) % 256).astype(np.uint8).tobytes())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace)
    compressed = zlib.compress(b"".join(lines))
    idat = ([png_chunk(b"IDAT", compressed[:10]), png_chunk(b"tEXt", b"a\0b"), png_chunk(b"IDAT", compressed[10:])]
            if split_idat else [png_chunk(b"IDAT", compressed)])
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + b"".join(png_chunk(k, b) for k, b in extra_chunks)
            + b"".join(idat) + png_chunk(b"IEND", b""))


def write_png16(path, pixels, colour_type):
    """Encode a 16-bit PNG, cycling through the five row filters."""
    Path(path).write_bytes(encode_png(pixels, 16, colour_type))


@pytest.mark.parametrize("channels, colour_type", [(3, 2), (4, 6), (2, 4)])
def test_16_bit_colour_png_keeps_its_depth(tmp_path, channels, colour_type):
    pixels = RNG.integers(0, 65535, (11, 13, channels), dtype=np.uint16)
    write_png16(tmp_path / "deep.png", pixels, colour_type)
    sample = read_sample(tmp_path / "deep.png")
    assert sample.pixels.dtype == np.uint16 and sample.meta["bits"] == 16
    expected = pixels[:, :, :1] if channels == 2 else pixels[:, :, :3]
    np.testing.assert_array_equal(sample.pixels, expected)


def test_png_unfiltering_matches_pillow_on_8_bit_images(tmp_path):
    # Pillow chooses filters adaptively; the shared unfilter step must reproduce its pixels.
    from medclassify.io.png16 import read_png_chunks, unfilter

    yy, xx = np.mgrid[0:40, 0:50]
    rgb = np.stack([(xx * 5) % 256, (yy * 3 + xx) % 256, RNG.integers(0, 255, (40, 50))], axis=2).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (width, height, *_), compressed = read_png_chunks((tmp_path / "a.png").read_bytes())
    raw = zlib.decompress(compressed)
    assert len({raw[y * (width * 3 + 1)] for y in range(height)}) > 1  # several filter types in use
    np.testing.assert_array_equal(unfilter(raw, height, width * 3, 3).reshape(height, width, 3), rgb)


def test_truncated_16_bit_png_is_undecodable(tmp_path):
    write_png16(tmp_path / "deep.png", RNG.integers(0, 65535, (20, 20, 3), dtype=np.uint16), 2)
    data = (tmp_path / "deep.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "cut.png")
    assert error.value.code == "undecodable"


# --- the ISA-L inflate path for plain PNGs (medclassify/io/png_inflate.py) ---------------------------

PLAIN_LAYOUTS = [((13, 11), 8, 0), ((13, 11), 16, 0), ((13, 11, 3), 8, 2), ((13, 11, 2), 8, 4), ((13, 11, 4), 8, 6)]


def _pillow_decoding(data):
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, image.size, np.asarray(image)


@pytest.mark.parametrize("shape, bit_depth, colour_type", PLAIN_LAYOUTS, ids=["L", "I;16", "RGB", "LA", "RGBA"])
def test_plain_png_inflate_path_equals_pillow_on_every_row_filter(shape, bit_depth, colour_type):
    pixels = RNG.integers(0, 2 ** bit_depth, shape)
    data = encode_png(pixels, bit_depth, colour_type)
    image = png_inflate.decode_png(data)
    assert image is not None
    mode, size, expected = _pillow_decoding(data)
    assert (image.mode, image.size) == (mode, size)
    np.testing.assert_array_equal(np.asarray(image), expected)


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "LA"])
def test_pillow_written_pngs_take_the_inflate_path_and_read_the_same(tmp_path, monkeypatch, mode):
    yy, xx = np.mgrid[0:64, 0:48]
    smooth = xx * 3 + yy * 2 + RNG.integers(0, 4, (64, 48))
    if mode == "I;16":
        image = Image.fromarray((smooth * 200).astype(np.uint16))
    else:
        image = Image.fromarray(np.dstack([(smooth + 40 * k) % 256 for k in range(4)]).astype(np.uint8)).convert(mode)
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("Software", "a test")
    image.save(tmp_path / "a.png", pnginfo=pnginfo, dpi=(72, 72))
    assert png_inflate.decode_png((tmp_path / "a.png").read_bytes()) is not None
    fast = read_sample(tmp_path / "a.png")
    monkeypatch.setattr(png_inflate, "_isal_decompressobj", None)  # Pillow alone, as without isal
    assert not png_inflate.available()
    slow = read_sample(tmp_path / "a.png")
    np.testing.assert_array_equal(fast.pixels, slow.pixels)
    assert fast.pixels.dtype == slow.pixels.dtype and fast.meta == slow.meta


def _png_inflating_to(path, width, height, bit_depth, colour_type, n_bytes):
    """A PNG whose image data, a few hundred kB, inflates to ``n_bytes``, far more than its size needs."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(n_bytes >> 20)) + compressor.flush()
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.parametrize("bit_depth, colour_type, height", [(8, 0, 16), (16, 2, 16), (16, 2, 0)])
def test_image_data_is_inflated_no_further_than_the_image_needs(tmp_path, bit_depth, colour_type, height):
    # A 16x16 PNG whose image data inflated to 1 GiB passed io.max_pixels and held 1-2 GB of memory;
    # with a height of 0 the 16-bit decoder's limit was 0 bytes, which zlib takes for none (helper-42).
    import tracemalloc

    _png_inflating_to(tmp_path / "bomb.png", 16, height, bit_depth, colour_type, 256 << 20)
    tracemalloc.start()
    try:
        try:
            sample = read_sample(tmp_path / "bomb.png")
        except ReadError as error:
            sample = error
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if height:
        assert sample.pixels.shape[:2] == (16, 16)
    else:
        assert isinstance(sample, ReadError) and sample.code == "undecodable"
    assert peak < 16 << 20, f"{peak / 2 ** 20:.0f} MiB held to read a 16x{height} image"


def _pillow_png(picture):
    buffer = io.BytesIO()
    (picture if isinstance(picture, Image.Image) else Image.fromarray(picture)).save(buffer, format="PNG")
    return buffer.getvalue()


def _damaged(data, position, value):
    return data[:position] + bytes([value]) + data[position + 1:]


def test_unusual_or_damaged_pngs_are_left_to_pillow(tmp_path):
    pixels = RNG.integers(0, 256, (9, 7)).astype(np.uint8)
    plain = encode_png(pixels, 8, 0)
    header_at = 8 + 8  # IHDR payload
    idat_at = plain.index(b"IDAT") + 4
    cases = {
        "palette": _pillow_png(Image.fromarray(pixels).convert("P")),
        "one_bit": _pillow_png(pixels > 128),
        "interlaced": encode_png(pixels, 8, 0, interlace=1),
        "transparency": encode_png(pixels, 8, 0, extra_chunks=[(b"tRNS", b"\x00\x00")]),
        "animation": encode_png(pixels, 8, 0, extra_chunks=[(b"acTL", b"\x00\x00\x00\x01\x00\x00\x00\x00")]),
        "unknown_chunk": encode_png(pixels, 8, 0, extra_chunks=[(b"abCd", b"x")]),
        "short_pHYs": encode_png(pixels, 8, 0, extra_chunks=[(b"pHYs", b"\x00")]),
        "split_image_data": encode_png(pixels, 8, 0, split_idat=True),
        "bad_header_crc": _damaged(plain, header_at + 13, plain[header_at + 13] ^ 1),
        "corrupt_image_data": _damaged(plain, idat_at + 6, plain[idat_at + 6] ^ 0xFF),
        "truncated": plain[: len(plain) - 30],
        # every row claims filter type 7, which does not exist
        "unknown_row_filter": plain[:idat_at - 8] + png_chunk(b"IDAT", zlib.compress((b"\x07" + bytes(7)) * 9))
        + png_chunk(b"IEND", b""),
    }
    for name, data in cases.items():
        assert png_inflate.decode_png(data) is None, name
    # Pillow then decodes them, and reports the damage as before.
    for name in ("bad_header_crc", "corrupt_image_data", "truncated", "unknown_row_filter"):
        (tmp_path / f"{name}.png").write_bytes(cases[name])
        with pytest.raises(ReadError) as error:
            read_sample(tmp_path / f"{name}.png")
        assert error.value.code == "undecodable", name


def test_plain_png_is_decoded_without_pillow_opening_it(tmp_path, monkeypatch):
    pixels = RNG.integers(0, 256, (9, 7)).astype(np.uint8)
    (tmp_path / "a.png").write_bytes(encode_png(pixels, 8, 0))

    def refuse(*args, **kwargs):
        raise AssertionError("Image.open was called")

    monkeypatch.setattr(Image, "open", refuse)
    np.testing.assert_array_equal(read_sample(tmp_path / "a.png").pixels[:, :, 0], pixels)


def test_palette_png_of_greys_stays_grey(tmp_path):
    grey = RNG.integers(0, 255, (16, 16), dtype=np.uint8)
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    sample = read_sample(tmp_path / "p.png")
    assert sample.pixels.shape == (16, 16, 1)


def test_bmp_and_jpeg(tmp_path):
    rgb = RNG.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    np.testing.assert_array_equal(read_sample(tmp_path / "a.bmp").pixels, rgb)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    sample = read_sample(tmp_path / "a.jpg")
    assert sample.pixels.shape == (24, 24, 3) and sample.pixels.dtype == np.uint8
    np.testing.assert_array_equal(sample.pixels, np.asarray(Image.open(tmp_path / "a.jpg")))


@pytest.mark.parametrize("shape, photometric", [((40, 50), None), ((40, 50, 3), "rgb")])
def test_16_bit_tiff(tmp_path, shape, photometric):
    pixels = RNG.integers(0, 65535, shape, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", pixels, photometric=photometric)
    sample = read_sample(tmp_path / "a.tif")
    assert sample.pixels.dtype == np.uint16
    np.testing.assert_array_equal(sample.pixels, pixels if pixels.ndim == 3 else pixels[:, :, None])
    assert sample.meta["bits"] == 16


def test_planar_rgb_tiff_becomes_channels_last(tmp_path):
    pixels = RNG.integers(0, 255, (3, 10, 12), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", pixels, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_sample(tmp_path / "planar.tif").pixels, np.moveaxis(pixels, 0, -1))


def test_palette_tiff_is_expanded_through_its_colour_map_like_pillow(tmp_path):
    indices = RNG.integers(0, 4, (16, 16), dtype=np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :4] = np.array([[0, 0, 0], [65535, 0, 0], [0, 65535, 0], [0, 0, 65535]]).T
    tifffile.imwrite(tmp_path / "rgb.tif", indices, photometric="palette", colormap=colormap)
    sample = read_sample(tmp_path / "rgb.tif")
    np.testing.assert_array_equal(sample.pixels, np.asarray(Image.open(tmp_path / "rgb.tif").convert("RGB")))
    assert sample.pixels.dtype == np.uint8 and sample.meta["photometric"] == "palette_rgb" and sample.meta["colour"]
    # A palette of greys stays grey, as in a palette PNG.
    greys = np.repeat(np.arange(256, dtype=np.uint16)[::-1] * 257, 3).reshape(256, 3).T
    tifffile.imwrite(tmp_path / "grey.tif", indices, photometric="palette", colormap=greys)
    sample = read_sample(tmp_path / "grey.tif")
    np.testing.assert_array_equal(sample.pixels[:, :, 0], 255 - indices)
    assert sample.meta["photometric"] == "palette_grey" and not sample.meta["colour"]


def test_palette_tiff_with_an_8_bit_colour_map_is_not_black(tmp_path):
    # Old writers stored the colour map as 0..255; libtiff reads such a map as 8-bit, so do we.
    indices = RNG.integers(0, 4, (16, 16), dtype=np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :4] = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [10, 20, 30]]).T
    tifffile.imwrite(tmp_path / "old.tif", indices, photometric="palette", colormap=colormap)
    np.testing.assert_array_equal(read_sample(tmp_path / "old.tif").pixels, colormap.T[indices])


@pytest.mark.parametrize("dtype", [np.uint8, bool])
def test_miniswhite_tiff_is_inverted_like_pillow(tmp_path, dtype):
    pixels = RNG.integers(0, 256, (16, 16)).astype(dtype) if dtype is np.uint8 else RNG.random((16, 16)) > 0.5
    tifffile.imwrite(tmp_path / "white.tif", pixels, photometric="miniswhite")
    sample = read_sample(tmp_path / "white.tif")
    pillow = np.asarray(Image.open(tmp_path / "white.tif").convert("L"))  # bilevel: 0 and 255
    np.testing.assert_array_equal(sample.pixels[:, :, 0], pillow)
    assert sample.pixels.dtype == np.uint8 and sample.meta["photometric"] == "grey"


def test_miniswhite_tiff_is_inverted_within_its_stored_range(tmp_path):
    # Pillow leaves 16-bit MINISWHITE as stored and cannot open signed ones; DICOM MONOCHROME1 is
    # the convention: mirror within the range the bits allow, keeping the dtype.
    unsigned = RNG.integers(0, 65536, (8, 8)).astype(np.uint16)
    signed = RNG.integers(-32768, 32768, (8, 8)).astype(np.int16)
    for pixels, expected in [(unsigned, 65535 - unsigned), (signed, -1 - signed)]:
        tifffile.imwrite(tmp_path / "white.tif", pixels, photometric="miniswhite")
        sample = read_sample(tmp_path / "white.tif")
        assert sample.pixels.dtype == pixels.dtype
        np.testing.assert_array_equal(sample.pixels[:, :, 0], expected)
    # An extra sample (alpha) is not a grey value: it stays as stored.
    grey_alpha = RNG.integers(0, 256, (8, 8, 2)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "alpha.tif", grey_alpha, photometric="miniswhite", extrasamples=["unassalpha"])
    with tifffile.TiffFile(tmp_path / "alpha.tif") as tif:
        assert tif.pages[0].extrasamples  # the file does hold the alpha
    decoded, _ = read_tiff(tmp_path / "alpha.tif", max_pixels=10**6)  # read_sample would drop the alpha
    np.testing.assert_array_equal(decoded, np.stack([255 - grey_alpha[:, :, 0], grey_alpha[:, :, 1]], axis=2))


def test_a_damaged_tiff_is_one_error_with_nothing_on_stderr(tmp_path):
    # tifffile logged a line per unreadable tag beside the ReadError (helper-76). In a process of
    # its own: pytest's log capture would take the lines that Python prints without a handler.
    import subprocess

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64), np.uint8), description="x" * 100)
    (tmp_path / "cut.tif").write_bytes((tmp_path / "a.tif").read_bytes()[:300])
    code = ("import sys; from medclassify.io import ReadError, read_sample\n"
            "try:\n    read_sample(sys.argv[1])\nexcept ReadError as error:\n    print(error.code)")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cut.tif")], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.stdout.strip() == "undecodable" and run.stderr == "", run.stderr


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_an_exif_orientation_turns_the_image_as_viewers_show_it(tmp_path, orientation, suffix):
    # A phone's photo stored sideways with Orientation 6 was read sideways (helper-76).
    from PIL import ImageOps

    pixels = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / f"photo{suffix}", exif=exif)
    sample = read_sample(tmp_path / f"photo{suffix}")
    with Image.open(tmp_path / f"photo{suffix}") as stored:
        np.testing.assert_array_equal(sample.pixels, np.asarray(ImageOps.exif_transpose(stored)))
    assert sample.pixels.shape[:2] == ((60, 40) if orientation >= 5 else (40, 60))
    assert sample.meta.get("exif_orientation") == (None if orientation == 1 else orientation)


def test_an_exif_orientation_turns_a_16_bit_colour_png_and_one_whose_exif_is_a_text_profile(tmp_path):
    # Neither is decoded by Pillow here, and both were read unturned (helper-77).
    exif = Image.new("L", (1, 1)).getexif()
    exif[0x0112] = 6
    pixels = RNG.integers(0, 65535, (11, 13, 3), dtype=np.uint16)
    (tmp_path / "deep.png").write_bytes(encode_png(pixels, 16, 2, extra_chunks=[(b"eXIf", exif.tobytes())]))
    sample = read_sample(tmp_path / "deep.png")
    np.testing.assert_array_equal(sample.pixels, np.rot90(pixels, -1))
    assert sample.meta["exif_orientation"] == 6 and sample.meta["bits"] == 16

    grey = RNG.integers(0, 255, (20, 30), dtype=np.uint8)
    raw = exif.tobytes().hex()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(raw) // 2:8d}\n{raw}\n")  # as ImageMagick writes it
    Image.fromarray(grey).save(tmp_path / "profile.png", pnginfo=info)
    np.testing.assert_array_equal(read_sample(tmp_path / "profile.png").pixels[:, :, 0], np.rot90(grey, -1))


def test_a_16_bit_colour_png_with_damaged_exif_reads_as_stored(tmp_path):
    # The orientation's own reading raised a SyntaxError, and a readable image became undecodable (helper-79).
    pixels = RNG.integers(0, 65535, (6, 9, 3), dtype=np.uint16)
    (tmp_path / "deep.png").write_bytes(encode_png(pixels, 16, 2, extra_chunks=[(b"eXIf", b"not exif at all")]))
    sample = read_sample(tmp_path / "deep.png")
    np.testing.assert_array_equal(sample.pixels, pixels)
    assert "exif_orientation" not in sample.meta


@pytest.mark.parametrize("damage", ["eXIf chunk", "text profile"])
def test_an_8_bit_png_with_damaged_exif_reads_as_stored(tmp_path, damage):
    # Pillow's path read the orientation inside the decoding's try: the image became undecodable,
    # where a 16-bit one with the same damage read as stored (helper-81).
    grey = RNG.integers(0, 255, (5, 7), dtype=np.uint8)
    if damage == "eXIf chunk":
        Image.fromarray(grey).save(tmp_path / "a.png", exif=b"X" * 16)
    else:
        info = PngImagePlugin.PngInfo()
        info.add_text("Raw profile type exif", "\nexif\n       8\nnot hex at all\n")
        Image.fromarray(grey).save(tmp_path / "a.png", pnginfo=info)
    sample = read_sample(tmp_path / "a.png")
    np.testing.assert_array_equal(np.squeeze(sample.pixels), grey)
    assert "exif_orientation" not in sample.meta


@pytest.mark.parametrize("layout", ["8-bit tEXt", "8-bit iTXt", "16-bit colour iTXt"])
def test_an_xmp_orientation_turns_the_image_on_every_path(tmp_path, layout):
    # Pillow (and exif_transpose) read XMP's tiff:Orientation where EXIF has none; the ISA-L path
    # took an XMP tEXt chunk for harmless and a 16-bit PNG looked for EXIF only: the same
    # picture came out turned or not by the path it took (helper-81).
    xmp = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    if layout.startswith("16-bit"):
        pixels = RNG.integers(0, 65535, (5, 7, 3), dtype=np.uint16)
        chunk = b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp.encode()
        (tmp_path / "a.png").write_bytes(encode_png(pixels, 16, 2, extra_chunks=[(b"iTXt", chunk)]))
    else:
        pixels = RNG.integers(0, 255, (5, 7), dtype=np.uint8)
        info = PngImagePlugin.PngInfo()
        (info.add_text if layout == "8-bit tEXt" else info.add_itxt)("XML:com.adobe.xmp", xmp)
        Image.fromarray(pixels).save(tmp_path / "a.png", pnginfo=info)
    sample = read_sample(tmp_path / "a.png")
    np.testing.assert_array_equal(np.squeeze(sample.pixels), np.rot90(pixels, -1))
    assert sample.meta["exif_orientation"] == 6


def test_a_tiff_without_a_photometric_tag_is_refused_by_name(tmp_path):
    # tifffile gives a bare 0 for the missing tag, and the reader stopped with an AttributeError (helper-77).
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        offset = tif.pages[0].tags[262].offset
    data = bytearray((tmp_path / "a.tif").read_bytes())
    struct.pack_into("<H", data, offset, 65000)  # PhotometricInterpretation becomes a private tag
    (tmp_path / "b.tif").write_bytes(bytes(data))
    with pytest.raises(ReadError, match="unsupported_image: TIFF without a PhotometricInterpretation tag"):
        read_sample(tmp_path / "b.tif")
    struct.pack_into("<H", data, offset, 262)  # the tag again, with a value TIFF does not define
    struct.pack_into("<H", data, offset + 8, 65000)
    (tmp_path / "c.tif").write_bytes(bytes(data))
    with pytest.raises(ReadError, match="unsupported_image: TIFF of unknown PhotometricInterpretation 65000"):
        read_sample(tmp_path / "c.tif")


@pytest.mark.parametrize("mode, photometric", [("YCbCr", "ycbcr"), ("LAB", "cielab")])
def test_a_tiff_of_ycbcr_or_lab_samples_is_refused_not_read_as_rgb(tmp_path, mode, photometric):
    # tifffile returns the stored samples: red [200, 30, 30] came out [80, 99, 213] (helper-76).
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[...] = [200, 30, 30]
    Image.fromarray(rgb).convert(mode).save(tmp_path / "colour.tif")
    with pytest.raises(ReadError, match=f"unsupported_image: TIFF of photometric interpretation {photometric}"):
        read_sample(tmp_path / "colour.tif")
    Image.fromarray(rgb).save(tmp_path / "jpeg.tif", compression="jpeg")  # JPEG-compressed colour reads as before
    assert np.abs(read_sample(tmp_path / "jpeg.tif").pixels[0, 0].astype(int) - [200, 30, 30]).max() <= 2


def test_floating_point_miniswhite_tiff_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "white.tif", RNG.random((8, 8)).astype(np.float32), photometric="miniswhite")
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "white.tif")
    assert error.value.code == "unsupported_image" and "MINISWHITE" in error.value.message


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, bool])
def test_npy(tmp_path, dtype):
    pixels = RNG.integers(0, 2 if dtype is bool else 200, (9, 11)).astype(dtype)
    np.save(tmp_path / "a.npy", pixels)
    sample = read_sample(tmp_path / "a.npy")
    np.testing.assert_array_equal(sample.pixels[:, :, 0], pixels.astype(np.uint8) * 255 if dtype is bool else pixels)


def test_a_mask_saved_as_bilevel_tiff_npy_or_1_bit_png_decodes_alike(tmp_path):
    # The TIFF and .npy gave 0 and 1, the PNG 0 and 255: under intensity "none" one was black.
    mask = RNG.random((12, 10)) > 0.5
    Image.fromarray(mask).save(tmp_path / "mask.png")
    tifffile.imwrite(tmp_path / "mask.tif", mask, photometric="minisblack")  # tifffile's default for bools is MINISWHITE
    np.save(tmp_path / "mask.npy", mask)
    decoded = [read_sample(tmp_path / name).pixels for name in ("mask.png", "mask.tif", "mask.npy")]
    for pixels in decoded:
        assert pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels[:, :, 0], np.where(mask, 255, 0))


@pytest.mark.parametrize("channels", [2, 4])
def test_npy_of_two_or_four_channels_is_refused_not_cut_to_one_or_three(tmp_path, channels):
    # A PNG's 2nd or 4th channel is alpha; an array's is data, which was dropped without a word.
    np.save(tmp_path / "stack.npy", RNG.random((9, 8, channels)).astype(np.float32))
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "stack.npy")
    assert error.value.code == "unsupported_image" and f"has {channels} channels" in error.value.message


def test_a_grey_tiff_whose_second_sample_is_data_is_refused_and_one_whose_is_alpha_is_not(tmp_path):
    # A second sample marked "unspecified" is data: the channel policy dropped it as alpha.
    pixels = RNG.integers(0, 65536, (16, 16, 2)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "data.tif", pixels, photometric="minisblack", planarconfig="contig", extrasamples=[0])
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "data.tif")
    assert error.value.code == "unsupported_image" and "1 extra sample(s) that are not one alpha" in error.value.message
    tifffile.imwrite(tmp_path / "alpha.tif", pixels, photometric="minisblack", planarconfig="contig", extrasamples=[2])
    np.testing.assert_array_equal(read_sample(tmp_path / "alpha.tif").pixels, pixels[:, :, :1])


@pytest.mark.parametrize("samples, planar", [(3, "contig"), (4, "contig"), (4, "separate")])
def test_a_grey_tiff_of_three_or_four_samples_is_refused_not_read_as_rgb(tmp_path, samples, planar):
    # tifffile's default for a (Y, X, 4) minisblack array: the grey and data samples became R, G and B
    # and the 4th was dropped as alpha, without a word (helper-54).
    pixels = RNG.integers(0, 256, (16, 16, samples)).astype(np.uint8)
    if planar == "separate":
        pixels = np.moveaxis(pixels, -1, 0)
    tifffile.imwrite(tmp_path / "g.tif", pixels, photometric="minisblack", planarconfig=planar)
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "g.tif")
    assert error.value.code == "unsupported_image"
    assert f"grey TIFF with {samples - 1} extra sample(s)" in error.value.message


def test_rgbx_padding_is_dropped_and_cmyk_is_refused(tmp_path):
    rgb = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("RGBX").save(tmp_path / "rgbx.tif")  # ExtraSamples "unspecified": padding
    np.testing.assert_array_equal(read_sample(tmp_path / "rgbx.tif").pixels, rgb)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "cmyk.tif")
    assert error.value.code == "unsupported_image" and "CMYK" in error.value.message


@pytest.mark.parametrize("compression", ["tiff_lzw", "jpeg", "group4", "tiff_adobe_deflate", "packbits"])
def test_compressed_tiffs_decode_as_pillow_decodes_them(tmp_path, compression):
    # LZW, JPEG and CCITT were "undecodable": tifffile needs imagecodecs for them.
    grey = RNG.integers(0, 256, (24, 16), dtype=np.uint8)
    image = Image.fromarray(grey > 127) if compression == "group4" else Image.fromarray(grey)
    image.save(tmp_path / "c.tif", compression=compression)
    expected = np.asarray(Image.open(tmp_path / "c.tif").convert("L"))
    np.testing.assert_array_equal(read_sample(tmp_path / "c.tif").pixels[:, :, 0], expected)


def test_npy_volume_is_refused(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((5, 9, 9)))
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "v.npy")
    assert error.value.code == "unsupported_image"


@pytest.mark.parametrize("shape", [(0, 16), (16, 0, 1), (4, 4, 0)])
def test_npy_without_pixels_is_refused(tmp_path, shape):
    # Validation passed it (with warnings) and preprocessing failed on it: an image of no pixels.
    np.save(tmp_path / "empty.npy", np.zeros(shape, dtype=np.uint8))
    with pytest.raises(ReadError, match="holds no image") as error:
        read_sample(tmp_path / "empty.npy")
    assert error.value.code == "unsupported_image"


def test_npy_layouts_and_damage(tmp_path):
    pixels = RNG.integers(0, 60000, (7, 5), dtype=np.uint16)
    np.save(tmp_path / "fortran.npy", np.asfortranarray(pixels))
    np.save(tmp_path / "big_endian.npy", pixels.astype(">u2"))
    for name in ("fortran.npy", "big_endian.npy"):
        sample = read_sample(tmp_path / name)
        assert sample.pixels.dtype.isnative
        np.testing.assert_array_equal(sample.pixels[:, :, 0], pixels)
    data = (tmp_path / "fortran.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-10])
    (tmp_path / "no_header.npy").write_bytes(b"\x93NUMPY" + b"\x09\x00" + data[8:])
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    for name, code in [("cut.npy", "undecodable"), ("no_header.npy", "undecodable"),
                       ("objects.npy", "unsupported_image")]:
        with pytest.raises(ReadError) as error:
            read_sample(tmp_path / name)
        assert error.value.code == code, name
    # The pixel limit is checked on the header, before any pixel is read: this header claims
    # 10^10 pixels that the file does not hold, and the error is about the size, not the data.
    with open(tmp_path / "bomb.npy", "wb") as bomb:
        np.lib.format.write_array_header_1_0(bomb, {"descr": "|u1", "fortran_order": False,
                                                    "shape": (100000, 100000)})
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "bomb.npy")
    assert error.value.code == "too_many_pixels"


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    png_claiming_size(tmp_path / "bomb.png", 100000, 100000)
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "bomb.png")
    assert error.value.code == "too_many_pixels" and "100000x100000" in error.value.message
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ReadError) as error:
        read_sample(tmp_path / "small.png", io_options={"max_pixels": 399})
    assert error.value.code == "too_many_pixels"


def test_format_is_recognised_by_content(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "really_png.jpg", format="PNG")
    assert detect_format(tmp_path / "really_png.jpg") == ("png", True)
    assert read_sample(tmp_path / "really_png.jpg").meta["extension_mismatch"] is True
    (tmp_path / "x.png").write_text("hello")
    with pytest.raises(ReadError, match="not a PNG image"):
        detect_format(tmp_path / "x.png")


@pytest.mark.parametrize("save", [
    lambda path: Image.fromarray(RNG.integers(0, 256, (9, 7), dtype=np.uint8)).save(path.with_suffix(".png")),
    lambda path: Image.fromarray(RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(path.with_suffix(".jpg")),
    lambda path: Image.fromarray(RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(path.with_suffix(".bmp")),
    lambda path: write_png16(path.with_suffix(".png"), RNG.integers(0, 65536, (5, 4, 3), dtype=np.uint16), 2),
    lambda path: tifffile.imwrite(path.with_suffix(".tif"), RNG.integers(0, 65536, (6, 5), dtype=np.uint16)),
    lambda path: shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm", path.with_suffix(".dcm")),
    lambda path: shutil.copy(Path(nibabel_data) / "anatomical.nii", path.with_suffix(".nii")),
    lambda path: path.with_suffix(".nii.gz").write_bytes(gzip.compress((Path(nibabel_data) / "anatomical.nii").read_bytes())),
    lambda path: np.save(path.with_suffix(".npy"), RNG.integers(0, 65536, (6, 5), dtype=np.uint16)),
], ids=["png", "jpeg", "bmp", "png16_rgb", "tiff", "dicom", "nifti", "nifti_gz", "npy"])
def test_images_are_opened_once(tmp_path, save):
    # Format detection, the PNG header and the decoder share one open file (nibabel's own load
    # would open a NIfTI three more times): on NFS or Lustre each open is a round trip to the server.
    save(tmp_path / "image")
    path = next(tmp_path.iterdir())
    expected = read_sample(path).pixels
    with opens_of(path) as opened:
        np.testing.assert_array_equal(read_sample(path).pixels, expected)
        assert len(opened) == 1
        np.testing.assert_array_equal(read_file_samples(path)[0][1].pixels, expected)
        assert len(opened) == 2
        assert len(sample_indices(path)) == 1 and len(opened) == 3


_WATCHED_OPENS = {}  # path -> the modes it was opened with, while a test watches it
_AUDIT_HOOK = []


def _record_open(event, args):
    if event == "open" and isinstance(args[0], str) and args[0] in _WATCHED_OPENS:
        _WATCHED_OPENS[args[0]].append(args[1])


@contextlib.contextmanager
def opens_of(path):
    """Record every open of ``path`` by any code, C extensions included (Python's "open" audit event)."""
    if not _AUDIT_HOOK:
        sys.addaudithook(_record_open)  # an audit hook cannot be removed: install one, once
        _AUDIT_HOOK.append(_record_open)
    opened = _WATCHED_OPENS[str(path)] = []
    try:
        yield opened
    finally:
        del _WATCHED_OPENS[str(path)]


def test_two_dimensional_files_give_one_sample(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    assert sample_indices(tmp_path / "a.png", {}) == [None]
    assert [index for index, _ in read_file_samples(tmp_path / "a.png")] == [None]


@pytest.mark.parametrize("policy, channels_in, channels_out", [
    ("keep_grey", 1, 1), ("keep_grey", 3, 3), ("keep_grey", 4, 3), ("keep_grey", 2, 1),
    ("rgb_to_grey", 1, 1), ("rgb_to_grey", 3, 1), ("grey_to_rgb", 1, 3), ("grey_to_rgb", 3, 3),
])
def test_channel_policy_shapes(policy, channels_in, channels_out):
    pixels = RNG.integers(0, 255, (4, 5, channels_in), dtype=np.uint8)
    out = apply_channel_policy(pixels, policy)
    assert out.shape == (4, 5, channels_out) and out.dtype == np.uint8


def test_rgb_to_grey_matches_pillow_luma():
    rgb = RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    ours = apply_channel_policy(rgb, "rgb_to_grey")[:, :, 0].astype(int)
    pillow = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
    assert np.abs(ours - pillow).max() <= 1  # Pillow uses fixed-point arithmetic


def test_grey_to_rgb_repeats_the_channel():
    grey = RNG.integers(0, 65535, (6, 6), dtype=np.uint16)
    out = apply_channel_policy(grey, "grey_to_rgb")
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_content_hash_covers_dtype_shape_and_values():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert content_hash(a) == content_hash(a.copy()) and len(content_hash(a)) == 32
    assert content_hash(a) != content_hash(a.astype(np.uint16))
    assert content_hash(a) != content_hash(a.reshape(4, 3))
    b = a.copy()
    b[0, 0] = 1
    assert content_hash(a) != content_hash(b)
    assert content_hash(np.asfortranarray(a)) == content_hash(a)


@pytest.mark.parametrize("options", [{"channels": "rgb"}, {"dicom_window": "lung"}, {"dicom_window": {"center": 1}},
                                     {"dicom_frame": -1}, {"nifti_slice": "first"}, {"nifti_axis": 3},
                                     {"max_pixels": 0}, {"unknown": 1}])
def test_invalid_io_options_are_rejected_up_front(tmp_path, options):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError):
        read_sample(tmp_path / "a.png", io_options=options)


def test_read_errors_name_no_memory_address():
    # Pillow's "cannot identify image file <_io.BytesIO object at 0x7f...>" made reports of the same
    # files differ between runs.
    error = ReadError("undecodable", "cannot identify image file <_io.BytesIO object at 0x7f3a2b1c9e50>")
    assert error.message == "cannot identify image file <_io.BytesIO>"
    assert str(error) == "undecodable: cannot identify image file <_io.BytesIO>"
    assert pickle.loads(pickle.dumps(error)).message == error.message


def test_a_file_that_cannot_be_opened_is_unreadable_not_undecodable(tmp_path, monkeypatch):
    # Permission denied said "undecodable", the code of a damaged image (helper-56). The tests run
    # as root, whom chmod 000 does not stop, so the open itself fails here.
    import medclassify.io

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(medclassify.io, "open", denied, raising=False)
    with pytest.raises(ReadError) as error:
        read_file_samples(path, DEFAULT_IO_OPTIONS)
    assert (error.value.code, error.value.message) == ("unreadable_file", "cannot be opened (Permission denied)")


def test_the_content_hash_marks_a_blank_image_and_keeps_its_length():
    from medclassify.content import is_constant_content

    blank, other_blank = np.zeros((8, 8), np.uint8), np.full((8, 8), 7, np.uint8)
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert is_constant_content(content_hash(blank)) and is_constant_content(content_hash(other_blank))
    assert content_hash(blank) != content_hash(other_blank) and len(content_hash(blank)) == 32
    assert not is_constant_content(content_hash(image)) and len(content_hash(image)) == 32
    # Finite values decide, as the readers' meta["constant"]: a masked volume's NaN background is blank.
    assert is_constant_content(content_hash(np.full((2, 2), np.nan)))
    assert is_constant_content(content_hash(np.array([[0.0, np.nan], [0.0, 0.0]])))
    assert not is_constant_content(content_hash(np.array([[0.0, np.nan], [1.0, 0.0]])))
    assert not is_constant_content(content_hash(np.array([[np.nan, 0.0, 1.0]])))  # the probe's NaN: a full look
    masked = np.full((64, 64), np.nan, np.float32)
    masked[20:40, 20:40] = np.random.default_rng(0).random((20, 20))
    assert not is_constant_content(content_hash(masked))  # NaN corners, content inside


def test_a_solid_colour_made_grey_is_blank_to_the_reader_as_to_the_content_hash(tmp_path):
    # meta["constant"] looked at the pixels before the channel policy, the hash after (helper-63).
    from medclassify.content import is_constant_content

    Image.fromarray(np.full((8, 8, 3), (200, 0, 0), np.uint8)).save(tmp_path / "red.png")
    for channels, blank in (("rgb_to_grey", True), ("keep_grey", False)):
        sample = read_sample(tmp_path / "red.png", None, {**DEFAULT_IO_OPTIONS, "channels": channels})
        assert sample.meta["constant"] is blank and is_constant_content(content_hash(sample.pixels)) is blank
