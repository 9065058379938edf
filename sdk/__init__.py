"""eoembed: Earth-observation embedding products (GeoParquet 1.1 data files + STAC metadata).

The public API is a handful of verbs; everything else lives in private modules::

    import eoembed
    eoembed.write_product("out/product", chips, model=contract)   # or ProductWriter for streams
    product = eoembed.open("out/product")
    vectors = product.to_numpy()
    product.sql("SELECT chip_id FROM embeddings WHERE bbox.xmin > ?", [-78.9])
    report = eoembed.validate("out/product")
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._chipid import chip_id
from ._errors import (
    ChipNotFoundError,
    CoordinateRangeError,
    DimensionMismatchError,
    EoembedError,
    GridError,
    MissingDependencyError,
    ModelContractMismatchError,
    NonFiniteEmbeddingError,
    ProductExistsError,
    ProductNotFoundError,
    QuantizationError,
    QueryError,
    SearchError,
    SpecError,
    UnknownFieldError,
)
from ._grid import get_grid, list_grids
from ._quantize import Quantization, dequantize, fit as fit_quantization, quantize
from ._read import Product, open_product as open, read_footer, sql
from ._spec import SPEC_VERSION
from ._validate import Finding, Report, validate
from ._write import ProductWriter, write_product

__all__ = [
    "SPEC_VERSION",
    "ChipNotFoundError",
    "CoordinateRangeError",
    "DimensionMismatchError",
    "EoembedError",
    "Finding",
    "GridError",
    "MissingDependencyError",
    "ModelContractMismatchError",
    "NonFiniteEmbeddingError",
    "Product",
    "ProductExistsError",
    "ProductNotFoundError",
    "ProductWriter",
    "Quantization",
    "QuantizationError",
    "QueryError",
    "Report",
    "SearchError",
    "SpecError",
    "UnknownFieldError",
    "chip_id",
    "dequantize",
    "fit_quantization",
    "get_grid",
    "list_grids",
    "open",
    "quantize",
    "read_footer",
    "sql",
    "validate",
    "write_product",
]
