"""One exception family for the whole package.

Every error raised on purpose by eoembed derives from :class:`EoembedError` and from the built-in
exception a caller would naturally catch (``ValueError``, ``FileNotFoundError``...). Messages name
the offending value and say what to do.
"""

from __future__ import annotations


class EoembedError(Exception):
    """Base class of every error eoembed raises on purpose."""


class SpecError(EoembedError, ValueError):
    """Metadata does not follow the eoembed spec (a schema violation, an unknown ``eoembed:`` field)."""


class UnknownFieldError(SpecError):
    """A field under the ``eoembed`` prefix that this spec version does not define."""


class DimensionMismatchError(EoembedError, ValueError):
    """Vectors whose width differs from the declared embedding dimension."""


class NonFiniteEmbeddingError(EoembedError, ValueError):
    """A vector holds NaN or an infinite value."""


class CoordinateRangeError(EoembedError, ValueError):
    """Coordinates outside the valid range of their CRS (e.g. longitude 400 in OGC:CRS84)."""


class ModelContractMismatchError(EoembedError, ValueError):
    """Two different model contracts were offered for one product."""


class QuantizationError(EoembedError, ValueError):
    """Quantisation parameters that are missing, non-finite or do not fit the data."""


class GridError(EoembedError, ValueError):
    """A grid id or cell id that cannot be parsed, or a point outside the grid."""


class ProductExistsError(EoembedError, FileExistsError):
    """The output directory already holds a product."""


class ProductNotFoundError(EoembedError, FileNotFoundError):
    """The path is not an eoembed product (no collection.json, or a half-written staging folder)."""


class MissingDependencyError(EoembedError, ImportError):
    """An optional package needed for this call is not installed."""


class ImageryError(EoembedError, ValueError):
    """A raster that cannot be read or used: unreadable, truncated, no CRS, a window or band outside it."""


class GeoreferenceError(ImageryError):
    """A raster or tile whose CRS or transform is missing or unusable (not 6 finite numbers, not north-up)."""


class TilingError(EoembedError, ValueError):
    """Chip parameters that cannot tile an image (chip size or stride below 1, a batch size below 1)."""


class EncoderError(EoembedError, ValueError):
    """Input an encoder cannot take (wrong array rank or shapes) or a bad encoder registration."""


class UnknownEncoderError(EoembedError, KeyError):
    """An encoder name that is not registered; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class QueryError(EoembedError, ValueError):
    """A SQL query failed; the message holds DuckDB's reason and the query."""


class SqlRefusedError(QueryError):
    """SQL that would reach outside the product: a second statement, a statement that is not a read-only
    query, a file or URL other than the products' data files, or a ``where`` that is not one boolean
    expression over the view's columns. The message says what is allowed."""


class BandMappingError(EoembedError, KeyError):
    """An encoder band with no source: a band name not offered, a missing file, a band index outside its file.

    The message names the band and the file(s) searched.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LabelError(EoembedError, ValueError):
    """Labels that cannot be joined to a product: no CRS, a CRS that contradicts the coordinates,
    geometries outside the product's extent, or no chip matched."""


class LabelCRSError(LabelError):
    """A label file with no CRS, or one whose declared CRS disagrees with the CRS given or with its coordinates."""


class LabelsOutsideProductError(LabelError):
    """No label geometry lies inside the product's extent; the message gives both extents."""


class SpatialBlockError(LabelError):
    """A block size that cannot be read, or blocks too large for a split: a class whose chips lie in
    too few blocks to keep its support and query chips apart; the message names the class."""


class LabelFieldError(EoembedError, KeyError):
    """A label column that the label file does not have; the message lists the columns it has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SearchError(EoembedError, ValueError):
    """Search options that cannot be used: a bad bbox, time, metric, mode or k, a zero query vector."""


class ChipNotFoundError(EoembedError, KeyError):
    """A chip id or a point that no chip of the product holds; the message names it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FewShotWarning(UserWarning):
    """A class with fewer labelled chips than shots + queries, or labels dropped while joining."""


class SubmissionFormatError(EoembedError, ValueError):
    """An Embed2Scale submission CSV that does not follow ``id,0,...,1023`` with finite numbers."""


class TaskConfigError(EoembedError, ValueError):
    """A NeuCo task file that cannot be used: bad TOML, unknown kind, missing targets file or column."""


class TrainingConfigError(EoembedError, ValueError):
    """A training configuration that cannot run: an unknown key, a value of the wrong type or range."""


class CheckpointError(EoembedError, ValueError):
    """A training checkpoint that cannot be used: not an eoembed checkpoint, missing, or from another run."""


class DamagedProductError(EoembedError, ValueError):
    """A product file that cannot be read or disagrees with the manifest: truncated, empty or garbage
    data, broken JSON, a missing column, vectors that are not what the footer declares.

    The message names the file (and the row or column where known).
    """


class UnsafePathError(EoembedError, ValueError):
    """An href or manifest path that is absolute, uses a scheme, or leaves the product folder."""


class ResumeMismatchError(EoembedError, ValueError):
    """``--resume`` with a configuration that differs from the job's recorded one; the message names each key."""


class OutputError(EoembedError, OSError):
    """The output cannot be written: a full disk, a read-only folder, an ``--out`` that is a file."""


class SourceFormatError(EoembedError, ValueError):
    """A third-party file that does not hold what its format needs (a missing column, an unreadable value)."""


class EmptySourceError(SourceFormatError):
    """A third-party file with no rows: there is nothing to import, and a product needs at least one chip."""


class SourceDefectError(SourceFormatError):
    """Defects found in a third-party file that the import does not repair unless asked; the message
    lists each defect and the ``repair`` name that fixes it."""


class UnknownImporterError(EoembedError, KeyError):
    """An import kind that is not registered; the message lists the registered kinds."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SourceNotFoundError(EoembedError, FileNotFoundError):
    """A third-party file to import does not exist."""


class ImportOptionError(EoembedError, TypeError):
    """An option an importer does not take, or a repair it does not know; the message lists what it takes."""


class PreviewError(EoembedError, ValueError):
    """A preview that cannot be drawn: no chip selected, an unknown output type or PCA scope."""


class ExportError(EoembedError, ValueError):
    """A result that cannot be written in the format asked (no geometry for GeoJSON, no --out for Parquet)."""


class TimeFormatError(EoembedError, ValueError):
    """A time that is not ISO 8601, or an interval that ends before it starts."""


class DuplicateChipError(EoembedError, ValueError):
    """Products to combine hold the same chip id; the message names one, counts them and gives the rule that resolves them."""


class StoreError(EoembedError, OSError):
    """A product location (URL) cannot be reached: unknown scheme, no access, or a failed transfer."""
