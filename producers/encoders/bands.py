"""Band aliases: the Sentinel-2 band that a band of another sensor stands in for.

The pretrained encoders (``galileo``, ``presto``) were trained on Sentinel-1/2 channels and find
them in a product by band name. A name alone is ambiguous: ``B2`` is blue on Sentinel-2 and
Landsat-8 but green on Landsat-7, and a GeoTIFF without band descriptions gets the positional
names ``B1``..``Bn``. So a band is resolved through its sensor: :data:`SENSOR_BANDS` names each
sensor's bands by their STAC ``eo:common_name`` (the STAC electro-optical extension's table), and
:data:`COMMON_NAME_TO_S2` gives the Sentinel-2 band of each common name. A band named by its common
name (``--bands blue=1,green=2,...``) resolves whatever the sensor.

The equivalence is spectral only, and approximate: bandwidths, radiometric levels (DN against
reflectance) and resolutions still differ between sensors.
"""

from __future__ import annotations

import re
from typing import Sequence

from eoembed._errors import EncoderError

__all__ = ["COMMON_NAME_TO_S2", "SENSOR_BANDS", "SENSORS", "s2_band", "s2_band_map"]

#: STAC eo:common_name -> the Sentinel-2 MSI band of that name (STAC eo extension's band table)
COMMON_NAME_TO_S2: dict[str, str] = {
    "coastal": "B1",
    "blue": "B2",
    "green": "B3",
    "red": "B4",
    "rededge071": "B5",
    "rededge075": "B6",
    "rededge078": "B7",
    "nir": "B8",
    "nir08": "B8A",
    "nir09": "B9",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
}

_TM = {"B1": "blue", "B2": "green", "B3": "red", "B4": "nir", "B5": "swir16", "B6": "lwir", "B7": "swir22"}
_OLI = {"B1": "coastal", "B2": "blue", "B3": "green", "B4": "red", "B5": "nir08", "B6": "swir16", "B7": "swir22",
        "B8": "pan", "B9": "cirrus", "B10": "lwir11", "B11": "lwir12"}
#: sensor -> band name -> STAC eo:common_name (None: Sentinel-2 itself, whose band names are the
#: targets). Landsat band numbers as USGS names them; ETM+ band 4 (775-900 nm) is ``nir`` like
#: Sentinel-2 B8, OLI band 5 (851-879 nm) ``nir08`` like B8A.
SENSOR_BANDS: dict[str, dict[str, str] | None] = {
    "sentinel2": None,
    "landsat4": _TM,
    "landsat5": _TM,
    "landsat7": {**_TM, "B8": "pan"},
    "landsat8": _OLI,
    "landsat9": _OLI,
}
SENSORS: tuple[str, ...] = tuple(SENSOR_BANDS)

_NUMBERED = re.compile(r"^B0*(\d{1,2}A?)$")
_S2_BANDS = frozenset(COMMON_NAME_TO_S2.values())


def _canonical(band: str) -> str:
    """``b04`` / ``B04`` / ``B4`` -> ``B4``; other names upper-cased."""
    name = str(band).strip().upper()
    match = _NUMBERED.match(name)
    return "B" + match.group(1) if match else name


def check_sensor(sensor: str, *, encoder: str) -> str:
    """``sensor`` as a key of :data:`SENSOR_BANDS`, or an error naming the choices."""
    key = str(sensor).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in SENSOR_BANDS:
        raise EncoderError(f"{encoder}: sensor={sensor!r} is not one of {', '.join(SENSORS)}; name the sensor whose "
                           "band numbers the product's band names are, or name the bands by their common names "
                           "(blue, green, red, nir, swir16, ...)")
    return key


def s2_band(band: str, *, sensor: str = "sentinel2") -> str | None:
    """The Sentinel-2 band (``B1``..``B12``, ``B8A``) that ``band`` of ``sensor`` stands in for, or None
    (a band with no Sentinel-2 counterpart: thermal, panchromatic, or a name the table lacks).

    A STAC common name (``red``, ``nir``, ``swir16``, ...) resolves for every sensor.
    """
    common = str(band).strip().lower()
    if common in COMMON_NAME_TO_S2:
        return COMMON_NAME_TO_S2[common]
    table = SENSOR_BANDS[check_sensor(sensor, encoder="bands")]
    name = _canonical(band)
    if table is None:
        return name if name in _S2_BANDS else None
    return COMMON_NAME_TO_S2.get(table.get(name, ""))


def s2_band_map(bands: Sequence[str], *, sensor: str) -> dict[str, str | None]:
    """``{band: Sentinel-2 band or None}`` for chip bands in chip order (a Presto ``band_map``)."""
    return {str(b): s2_band(b, sensor=sensor) for b in bands}
