"""PNG, JPEG and BMP through Pillow; TIFF through tifffile. The native dtype (uint8, uint16…) is kept."""

import io
import logging
import struct
import warnings

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from .base import ReadError, bilevel_as_grey, check_pixel_count, read_bytes
from . import png_inflate
from .channels import is_grey

# io.max_pixels is checked here; Pillow's own size warning would only repeat it. A filter set once,
# not catch_warnings per image: that swaps the process's filters, and under threads it unsilenced a
# DICOM read's warnings, which carry the file's values (see dicom._silencing_value_warnings).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# A damaged EXIF block is metadata: Pillow's warnings of it, per image and per tag, would fill the logs.
warnings.filterwarnings("ignore", category=UserWarning,
                        message=r"(Possibly corrupt EXIF|Corrupt EXIF|Tag data larger than file|Tag offset too large)")
# tifffile logs each tag of a damaged file that it cannot read; the file's ReadError tells the
# failure once. A handler of its own keeps Python's last-resort handler from printing them.
logging.getLogger("tifffile").addHandler(logging.NullHandler())
logging.getLogger("tifffile").propagate = False

# Pillow modes and the NumPy dtype they decode to without losing depth.
_NATIVE_MODES = {"L": np.uint8, "I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16,
                 "I;16N": np.uint16, "I": np.int32, "F": np.float32, "RGB": np.uint8,
                 "RGBA": np.uint8, "LA": np.uint8}


_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP"}


def png_header(source):
    """(width, height, bit_depth, colour_type) from a PNG's IHDR chunk, or None if malformed.

    ``source`` is a path or a binary file, which is left where it was.
    """
    head = read_bytes(source, 33)
    if len(head) < 29 or head[12:16] != b"IHDR":
        return None
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", head[16:26])
    return width, height, bit_depth, colour_type


def read_pillow(source, fmt, max_pixels):
    """Decode a PNG, JPEG or BMP file (a path, or a binary file at its start); return (array (H, W[, C]), meta)."""
    if fmt == "png":
        header = png_header(source)
        if header is None:
            raise ReadError("undecodable", "PNG signature without a valid IHDR header")
        width, height, bit_depth, colour_type = header
        check_pixel_count(height, width, max_pixels)
        if bit_depth == 16 and colour_type in (2, 4, 6):
            # Pillow reduces 16-bit colour and grey+alpha PNG to 8 bits; decode those ourselves.
            from .png16 import decode_png16

            array = decode_png16(source)
            photometric = {2: "rgb", 4: "grey", 6: "rgba"}[colour_type]
            meta = {"format": "png", "bits": 16, "photometric": photometric, "original_shape": list(array.shape)}
            return _as_shown(array, meta, _png_exif_orientation(source))
        if png_inflate.available():
            image = png_inflate.decode_png(read_bytes(source))
            if image is not None:
                return _array_and_meta(image, fmt)
    try:
        # Naming the format skips Pillow's probing of every other plugin.
        with Image.open(source, formats=[_PILLOW_FORMATS[fmt]]) as image:
            width, height = image.size
            check_pixel_count(height, width, max_pixels)
            image.load()
            return _as_shown(*_array_and_meta(image, fmt), _orientation_of(image))
    except Image.DecompressionBombError as error:
        raise ReadError("too_many_pixels", f"Pillow refused the image size: {error}") from None
    except UnidentifiedImageError:
        raise ReadError("undecodable", f"not a decodable {fmt.upper()} image") from None
    except (OSError, SyntaxError, ValueError, struct.error) as error:
        raise ReadError("undecodable", f"{fmt.upper()} decoding failed: {error}") from None


def _as_shown(array, meta, orientation):
    """``array`` turned as its EXIF Orientation says viewers show it (a phone's photo is often
    stored sideways), recorded in ``meta``; as stored for 1 or a value EXIF does not define."""
    if orientation not in _ORIENTED:
        return array, meta
    array = np.ascontiguousarray(_ORIENTED[orientation](array))
    return array, {**meta, "original_shape": list(array.shape), "exif_orientation": orientation}


# EXIF Orientation 2 to 8 on an (H, W[, C]) array, as PIL.ImageOps.exif_transpose turns an image.
_ORIENTED = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
             8: lambda a: np.rot90(a, 1)}


def _orientation_of(image):
    """The Orientation Pillow reads for ``image``: its EXIF's, else its XMP's tiff:Orientation,
    as PIL.ImageOps.exif_transpose turns it. 1 when there is none or it cannot be read: damaged
    metadata leaves an image that decodes as stored."""
    try:
        return image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - Pillow raises what the damage gives (ValueError, SyntaxError, struct.error…)
        return 1


def _png_exif_orientation(source):
    """The Orientation of a PNG decoded without Pillow: 1 unless it holds EXIF (an eXIf chunk,
    or ImageMagick's text profile) or XMP, which Pillow then reads."""
    data = read_bytes(source)
    keys = (b"eXIf", *(key.rstrip(b"\x00") for key in png_inflate.ORIENTATION_TEXT_KEYS))
    if not any(key in data for key in keys):
        return 1
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            return _orientation_of(image)
    except Exception:  # noqa: BLE001 - the image, decoded already, stands as stored
        return 1


def _array_and_meta(image, fmt):
    array, photometric = _pillow_to_array(image)
    bits = image.info.get("bits") or _bits_of(array)
    meta = {"format": fmt, "bits": int(bits), "photometric": photometric,
            "original_shape": list(array.shape)}
    return array, meta


def _pillow_to_array(image):
    mode = image.mode
    if mode == "1":
        image, mode = image.convert("L"), "L"
    elif mode in ("P", "PA"):
        # Palette images: expand the palette; a palette of greys stays grey.
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
        rgb = np.asarray(image)
        if is_grey(rgb[:, :, :3]):
            return np.ascontiguousarray(rgb[:, :, 0]), "palette_grey"
        return rgb, "palette_rgb"
    elif mode not in _NATIVE_MODES:
        # CMYK, YCbCr, LAB, HSV, I;16 variants with odd packing: Pillow converts them to RGB.
        image, mode = image.convert("RGB"), "RGB"
    array = np.asarray(image)
    dtype = _NATIVE_MODES[mode]
    array = array.astype(dtype, copy=False)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    photometric = "grey" if array.ndim == 2 or mode == "LA" else mode.lower()
    return np.ascontiguousarray(array), photometric


def _bits_of(array):
    return array.dtype.itemsize * 8


# TIFF ExtraSamples codes of an alpha channel: associated (premultiplied) and unassociated.
_ALPHA_SAMPLES = (1, 2)


# Photometric interpretations whose samples tifffile returns as the values they stand for.
_TIFF_PHOTOMETRICS = ("minisblack", "miniswhite", "rgb", "palette", "separated")


def read_tiff(source, max_pixels):
    """Decode the first page of a TIFF file (a path, or a binary file); return (array (H, W[, C]), meta).

    A palette image is expanded through its colour map (photometric ``palette_rgb`` or ``palette_grey``);
    a MINISWHITE one is inverted (photometric ``grey``). ``meta["pages"]`` counts the pages, for
    validation's ``unread_tiff_pages`` warning.
    """
    import tifffile

    try:
        with tifffile.TiffFile(source) as tif:
            if not tif.pages:
                raise ReadError("undecodable", "TIFF without image pages")
            page = tif.pages[0]
            axes = page.axes
            shape = dict(zip(axes, page.shape))
            check_pixel_count(shape.get("Y", 1), shape.get("X", 1), max_pixels)
            array = page.asarray()
            n_pages = len(tif.pages)
            bits = int(page.bitspersample)
            # tifffile gives a bare number where the tag is missing (0) or holds an unknown value.
            photometric = getattr(page.photometric, "name", "").lower() or None
            unknown_photometric = page.tags.valueof(262) if photometric is None else None
            jpeg = page.compression is not None and "JPEG" in page.compression.name
            colormap = page.colormap
            extrasamples = tuple(int(code) for code in page.extrasamples)
    except ReadError:
        raise
    except Exception as error:  # tifffile raises many types (TiffFileError, ValueError, …)
        # A compression whose codec imagecodecs lacks is not a damaged file.
        code = "compressed_unsupported" if "requires the 'imagecodecs' package" in str(error) else "undecodable"
        raise ReadError(code, f"TIFF decoding failed: {type(error).__name__}: {error}") from None
    if axes.startswith("S") and array.ndim == 3:
        array = np.moveaxis(array, 0, -1)  # planar configuration: (S, Y, X) -> (Y, X, S)
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] > 4):
        raise ReadError("unsupported_image", f"TIFF page of shape {array.shape} (axes {axes}) is not a 2D image")
    if photometric is None and unknown_photometric is not None:
        raise ReadError("unsupported_image", f"TIFF of unknown PhotometricInterpretation {unknown_photometric}: save it "
                                             "as grey or RGB")
    if photometric is None:
        raise ReadError("unsupported_image", "TIFF without a PhotometricInterpretation tag, which tells grey from "
                                             "white-is-zero and RGB: save it with one")
    if photometric not in _TIFF_PHOTOMETRICS and not (photometric == "ycbcr" and jpeg):
        # tifffile returns such samples as stored: YCbCr or CIELab values taken for R, G and B.
        # (Inside JPEG compression the codec converts YCbCr to RGB.)
        raise ReadError("unsupported_image", f"TIFF of photometric interpretation {photometric}: save it as RGB or "
                                             "grey")
    if array.ndim == 3 and photometric == "separated":
        raise ReadError("unsupported_image", f"CMYK (separated) TIFF of {array.shape[2]} inks: convert it to RGB or grey")
    grey_with_samples = photometric in ("minisblack", "miniswhite") or array.shape[-1] == 2
    if array.ndim == 3 and grey_with_samples and not (array.shape[2] == 2 and extrasamples
                                                      and extrasamples[-1] in _ALPHA_SAMPLES):
        # A grey image's samples beyond the first are data (ExtraSamples "unspecified"): a second
        # energy or sequence, a microscope's channels. Read as alpha, or as R, G and B, they were
        # lost or mixed without a word. (An RGB image's unspecified 4th sample is padding, RGBX,
        # which libtiff and Pillow drop too.)
        raise ReadError("unsupported_image", f"grey TIFF with {array.shape[2] - 1} extra sample(s) that are not one "
                                             f"alpha (ExtraSamples {list(extrasamples)}): an image has 1 (grey) or 3 "
                                             "(RGB) channels, with an optional alpha: save one channel per file")
    if array.dtype == bool:
        array, photometric = bilevel_as_grey(array, inverted=photometric == "miniswhite"), "grey"
    elif array.dtype.kind not in "uif":
        raise ReadError("unsupported_image", f"TIFF page of pixel type {array.dtype} is not a real-valued image")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if photometric == "palette":
        array, photometric = _expand_palette(array, colormap)
    elif photometric == "miniswhite":
        # Inverted, the pixels mean what MINISBLACK ones mean: plain grey, brighter is higher.
        array, photometric = _invert_miniswhite(array, bits), "grey"
    meta = {"format": "tiff", "bits": bits, "photometric": photometric,
            "original_shape": list(array.shape), "pages": n_pages}
    return np.ascontiguousarray(array), meta


def _expand_palette(indices, colormap):
    """Palette indices through the TIFF colour map: (H, W, 3) uint8, or (H, W) when every colour is grey.

    Like a palette PNG (``_pillow_to_array``): the indices alone are not the picture.
    """
    if indices.ndim != 2 or indices.dtype.kind != "u":
        raise ReadError("unsupported_image", f"palette TIFF with pixels of shape {indices.shape} "
                                             f"and type {indices.dtype} (one unsigned index per pixel expected)")
    if colormap is None or np.ndim(colormap) != 2 or len(colormap) != 3:
        raise ReadError("undecodable", "palette TIFF without a valid colour map (ColorMap tag)")
    colormap = np.asarray(colormap)
    if indices.size and int(indices.max()) >= colormap.shape[1]:
        raise ReadError("undecodable", f"palette index {int(indices.max())} beyond the "
                                       f"{colormap.shape[1]} colours of the colour map")
    # The TIFF colour map is 16-bit: keep its top 8 bits, as Pillow does. Some old writers stored
    # 8-bit values, which the top 8 bits would turn black: a map with every value under 256 is read
    # as 8-bit, as libtiff's RGBA interface (TIFFReadRGBAImage, tiff2rgba) does.
    colours = colormap if colormap.max(initial=0) < 256 else colormap >> 8
    rgb = colours.astype(np.uint8).T[indices]
    if is_grey(rgb):
        return rgb[:, :, 0], "palette_grey"
    return rgb, "palette_rgb"


def _invert_miniswhite(array, bits):
    """Mirror MINISWHITE values within their stored range, like DICOM MONOCHROME1: 0 (white) becomes the maximum.

    Only the grey channel is inverted; an extra sample (alpha) keeps its meaning.
    """
    if array.dtype.kind == "f":
        # Floats have no stored range to mirror within, and no convention says what white is.
        raise ReadError("unsupported_image", "MINISWHITE TIFF with floating-point pixels (no range to invert them within)")
    grey = array if array.ndim == 2 else array[:, :, 0]
    if array.dtype.kind == "i":
        inverted = ~grey  # -1 - value mirrors the signed range -2**(bits-1) .. 2**(bits-1) - 1
    else:
        inverted = np.asarray(2 ** bits - 1, array.dtype) - grey  # within 0 .. 2**bits - 1, same dtype
    if array.ndim == 2:
        return inverted
    array = array.copy()
    array[:, :, 0] = inverted
    return array
