"""Import embedding products of other systems into eoembed products.

One module per peer format registers an :class:`Importer` under its kind; they share the contract,
the source diagnosis, the grid placement and the writer of :mod:`._common`. Adding a format is
adding a module here and its import line below::

    report = eoembed.import_product("clay", ["tile.gpq"], out="clay-product")
"""

from __future__ import annotations

from ._common import ImportReport, import_product
from ._registry import Importer, ImportPlan, ImportSession, get_importer, list_importers, register_importer

__all__ = ["ImportPlan", "ImportReport", "ImportSession", "Importer", "get_importer", "import_product",
           "list_importers", "register_importer"]

from . import alphaearth, clay, earthindex, embed2scale, majortom, planet, tessera  # noqa: E402,F401  register the formats
