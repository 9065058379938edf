"""torch datasets over products: (vector, metadata) pairs with filters, map-style and streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import eoembed
from tests.factories import write


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    return eoembed.open(write(tmp_path_factory.mktemp("d") / "p", n=800, max_rows_per_file=300, quantization="int8"))


def test_map_and_streaming_datasets_yield_the_same_filtered_pairs(product):
    options = dict(bbox=(-78.8, 35.6, -78.7, 35.7), datetime="2020-05-20/..", where="valid_fraction > ?", params=[0.6],
                   columns=("chip_id", "datetime"))
    mapped = product.dataset(**options)
    streamed = list(product.dataset(streaming=True, **options))
    expected = product.sql(
        "SELECT chip_id FROM embeddings WHERE bbox.xmax >= -78.8 AND bbox.xmin <= -78.7 AND bbox.ymax >= 35.6 "
        "AND bbox.ymin <= 35.7 AND datetime >= TIMESTAMPTZ '2020-05-20' AND valid_fraction > 0.6").column("chip_id").to_pylist()
    assert 0 < len(mapped) == len(streamed) == len(expected)
    assert sorted(m["chip_id"] for _, m in streamed) == sorted(expected) == sorted(mapped[i][1]["chip_id"] for i in range(len(mapped)))
    vectors = {m["chip_id"]: v for v, m in streamed}
    for i in range(len(mapped)):
        vector, meta = mapped[i]
        assert vector.dtype == torch.float32 and vector.shape == (32,)
        torch.testing.assert_close(vector, vectors[meta["chip_id"]])


def test_dataloader_batches_and_workers(product):
    loader = DataLoader(product.dataset(), batch_size=64, shuffle=True)
    vectors, meta = next(iter(loader))
    assert vectors.shape == (64, 32) and len(meta["chip_id"]) == 64
    streamed = DataLoader(product.dataset(streaming=True), batch_size=100, num_workers=2)
    assert sum(len(v) for v, _ in streamed) == product.num_rows


def test_unknown_column_is_named(product):
    with pytest.raises(eoembed.SearchError, match=r"\['colour'\] are not in"):
        product.dataset(columns=("colour",))
