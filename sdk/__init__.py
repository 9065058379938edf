"""eoembed: Earth-observation embedding products (GeoParquet 1.1 data files + STAC metadata).

The public API is a handful of verbs; everything else lives in private modules::

    import eoembed
    eoembed.write_product("out/product", chips, model=contract)   # or ProductWriter for streams
    product = eoembed.open("out/product")
    vectors = product.to_numpy()
    product.sql("SELECT chip_id FROM embeddings WHERE bbox.xmin > ?", [-78.9])
    eoembed.preview(product, "preview.png")                   # PCA of the vectors as RGB (or .tif: a COG)
    report = eoembed.validate("out/product")
    eoembed.import_product("clay", ["tile.gpq"], out="out/clay")     # other systems' embeddings
    eoembed.subset("out/product", bbox=(-79, 35, -78, 36), out="out/part")  # also merge, append
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._chipid import chip_id
from ._errors import (
    ChipNotFoundError,
    CoordinateRangeError,
    DamagedProductError,
    DimensionMismatchError,
    DuplicateChipError,
    EmptySourceError,
    EoembedError,
    ExportError,
    FewShotWarning,
    GridError,
    ImportOptionError,
    LabelCRSError,
    LabelError,
    LabelFieldError,
    LabelsOutsideProductError,
    MissingDependencyError,
    ModelContractMismatchError,
    NonFiniteEmbeddingError,
    PreviewError,
    ProductExistsError,
    ProductNotFoundError,
    QuantizationError,
    QueryError,
    SearchError,
    SourceDefectError,
    SourceFormatError,
    SourceNotFoundError,
    SpatialBlockError,
    SpecError,
    SqlRefusedError,
    SubmissionFormatError,
    TaskConfigError,
    UnknownFieldError,
    UnknownImporterError,
    UnsafePathError,
)
from ._copy import copy
from ._embed2scale import read_embed2scale, write_embed2scale
from ._exchange import append, merge, subset
from ._blocks import spatial_blocks
from ._fewshot import FewShotReport, fewshot, fewshot_product, fewshot_splits, splits_table
from ._grid import get_grid, list_grids
from .importers import ImportReport, import_product, list_importers
from ._labels import LabelledChips, join_labels, raster_labels, read_labels
from ._neuco import NeucoReport, neuco_evaluate
from ._pixel import PixelProductWriter, write_pixel_product
from ._predict import draw_map, predict
from ._preview import Preview, preview
from ._quantize import Quantization, dequantize, fit as fit_quantization, quantize
from ._open import open_product as open
from ._pixel_fewshot import fewshot_pixels
from ._pixel_import import import_pixels
from ._pixel_predict import predict_pixels
from ._pixel_read import PixelProduct
from ._read import Product, read_footer, sql
from ._spec import SPEC_VERSION
from ._validate import Finding, Report, validate
from ._write import ProductWriter, write_product

__all__ = [
    "SPEC_VERSION",
    "ChipNotFoundError",
    "CoordinateRangeError",
    "DamagedProductError",
    "DimensionMismatchError",
    "DuplicateChipError",
    "EmptySourceError",
    "EoembedError",
    "ExportError",
    "FewShotReport",
    "FewShotWarning",
    "Finding",
    "GridError",
    "ImportOptionError",
    "ImportReport",
    "LabelCRSError",
    "LabelError",
    "LabelFieldError",
    "LabelledChips",
    "LabelsOutsideProductError",
    "MissingDependencyError",
    "NeucoReport",
    "ModelContractMismatchError",
    "NonFiniteEmbeddingError",
    "PixelProduct",
    "PixelProductWriter",
    "Preview",
    "PreviewError",
    "Product",
    "ProductExistsError",
    "ProductNotFoundError",
    "ProductWriter",
    "Quantization",
    "QuantizationError",
    "QueryError",
    "Report",
    "SearchError",
    "SourceDefectError",
    "SourceFormatError",
    "SourceNotFoundError",
    "SpatialBlockError",
    "SpecError",
    "SqlRefusedError",
    "SubmissionFormatError",
    "TaskConfigError",
    "UnknownFieldError",
    "UnknownImporterError",
    "UnsafePathError",
    "append",
    "chip_id",
    "dequantize",
    "draw_map",
    "fewshot",
    "fewshot_pixels",
    "fewshot_product",
    "fewshot_splits",
    "fit_quantization",
    "get_grid",
    "copy",
    "import_pixels",
    "import_product",
    "join_labels",
    "list_grids",
    "list_importers",
    "merge",
    "neuco_evaluate",
    "open",
    "predict",
    "predict_pixels",
    "preview",
    "quantize",
    "raster_labels",
    "read_embed2scale",
    "read_footer",
    "read_labels",
    "spatial_blocks",
    "splits_table",
    "sql",
    "subset",
    "validate",
    "write_embed2scale",
    "write_pixel_product",
    "write_product",
]
