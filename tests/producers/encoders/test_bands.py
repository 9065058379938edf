"""eoembed.producers.encoders.bands: which Sentinel-2 band a band of another sensor stands in for."""

from __future__ import annotations

import pytest

from eoembed._errors import EncoderError
from eoembed.producers.encoders.bands import COMMON_NAME_TO_S2, SENSORS, s2_band, s2_band_map
from eoembed.producers.encoders.presto import LANDSAT7_BAND_MAP


def test_landsat7_band_numbers_are_not_sentinel2_band_numbers():
    # ETM+ 1-5 are blue, green, red, NIR, SWIR1: Sentinel-2 B2, B3, B4, B8, B11, not B1..B5
    assert s2_band_map(["B1", "B2", "B3", "B4", "B5"], sensor="landsat7") == {
        "B1": "B2", "B2": "B3", "B3": "B4", "B4": "B8", "B5": "B11"}
    assert s2_band_map(["B1", "B2", "B3", "B4", "B5"], sensor="sentinel2") == {
        "B1": "B1", "B2": "B2", "B3": "B3", "B4": "B4", "B5": "B5"}
    assert s2_band("B6", sensor="landsat7") is None and s2_band("B8", sensor="landsat7") is None  # thermal, pan
    assert s2_band("B07", sensor="Landsat-7") == "B12"
    assert LANDSAT7_BAND_MAP == {"B1": "B2", "B2": "B3", "B3": "B4", "B4": "B8", "B5": "B11", "B7": "B12"}


def test_landsat8_and_common_names():
    assert [s2_band(f"B{i}", sensor="landsat8") for i in range(1, 8)] == ["B1", "B2", "B3", "B4", "B8A", "B11", "B12"]
    assert s2_band("B10", sensor="landsat9") is None
    for common, band in COMMON_NAME_TO_S2.items():  # a common name resolves whatever the sensor
        assert {s2_band(common, sensor=s) for s in SENSORS} == {band}
    assert s2_band("Red", sensor="landsat7") == "B4"
    assert s2_band("B08", sensor="sentinel2") == "B8" and s2_band("b8a") == "B8A" and s2_band("B13") is None


def test_an_unknown_sensor_names_the_choices():
    with pytest.raises(EncoderError, match="sensor='modis' is not one of sentinel2, landsat4"):
        s2_band("B1", sensor="modis")
