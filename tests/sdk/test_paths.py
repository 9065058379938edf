"""The one path resolver every reader uses: hrefs never leave the product folder."""

from __future__ import annotations

import os

import pytest

import eoembed
from eoembed._paths import inside


@pytest.mark.parametrize("href, base, expected", [
    ("data/part-00000.parquet", "", "data/part-00000.parquet"),
    ("../data/part-00000.parquet", "items", "data/part-00000.parquet"),
    ("./part-00000.json", "items", "items/part-00000.json"),
    ("items/../data/x.parquet", "", "data/x.parquet"),
])
def test_relative_hrefs_inside_the_product_resolve(tmp_path, href, base, expected):
    assert inside(tmp_path, href, base=base, where="test") == tmp_path / expected


@pytest.mark.parametrize("href, base, reason", [
    ("../outside.parquet", "", "leaves the product"),
    ("../../outside.parquet", "items", "leaves the product"),
    ("data/../../x", "", "leaves the product"),
    ("/etc/passwd", "", "absolute"),
    ("\\\\server\\share\\x.parquet", "", "absolute or non-POSIX"),
    ("file:///tmp/x.parquet", "", "scheme"),
    ("https://example.org/x.parquet", "", "scheme"),
    ("s3://bucket/x.parquet", "", "scheme"),
    ("C:/data/x.parquet", "", "scheme"),
    ("", "", "not a relative path"),
    (None, "", "not a relative path"),
    (3, "", "not a relative path"),
])
def test_unsafe_hrefs_are_refused_naming_where_they_were_written(tmp_path, href, base, reason):
    with pytest.raises(eoembed.UnsafePathError, match=reason) as caught:
        inside(tmp_path, href, base=base, where="manifest.parquet row 3")
    assert str(caught.value).startswith("manifest.parquet row 3: ")
    assert isinstance(caught.value, ValueError)


def test_a_symbolic_link_out_of_the_product_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.parquet").write_bytes(b"x")
    root = tmp_path / "product"
    root.mkdir()
    os.symlink(outside, root / "data")
    with pytest.raises(eoembed.UnsafePathError, match="leaves the product"):
        inside(root, "data/secret.parquet", where="manifest.parquet row 0")
