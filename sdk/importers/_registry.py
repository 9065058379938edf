"""The importer registry, apart from the formats that register in it.

An importer reads one peer format (Clay, Earth Index, Major TOM, ...) and hands back an
:class:`ImportPlan`: the model contract and batches of chips in the writer's layout. Everything
after that (grid cells, chip ids, defect policy, writing, validation) is shared, in
:mod:`eoembed.importers._common`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from eoembed._errors import ImportOptionError, SourceDefectError, SpecError, UnknownImporterError

__all__ = ["Importer", "ImportPlan", "ImportSession", "register_importer", "get_importer", "list_importers"]

_REGISTRY: dict[str, type["Importer"]] = {}


@dataclass
class ImportSession:
    """What one import found in its sources: defects (each repaired only when asked) and notes."""

    kind: str
    repair: frozenset[str] = frozenset()
    defects: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def defect(self, source: str | Path, message: str, *, repair: str | None = None) -> bool:
        """Record a defect of ``source``; True when the user asked for ``repair``, which the caller then applies."""
        repaired = repair is not None and repair in self.repair
        self.defects.append({"source": Path(source).name, "defect": message, "repair": repair, "repaired": repaired})
        return repaired

    def note(self, message: str) -> None:
        self.notes.append(message)

    def refuse_unrepaired(self) -> None:
        open_defects = [d for d in self.defects if not d["repaired"]]
        if not open_defects:
            return
        lines = [f"  {d['source']}: {d['defect']}" + (f" (repair with --repair {d['repair']})" if d["repair"] else
                                                       " (no automatic repair: fix the source first)")
                 for d in open_defects]
        raise SourceDefectError(f"{self.kind} import refused, the source has defects:\n" + "\n".join(lines))


@dataclass
class ImportPlan:
    """An importer's answer: the model contract and chips in :meth:`ProductWriter.write` layout.

    Batches need ``embedding``, ``geometry`` (OGC:CRS84) or ``bounds``, the time and ``source_id``;
    ``grid_cell`` and ``chip_id`` are filled in by the shared code when absent. ``normalized`` None
    lets the shared code decide from the vectors; ``grid`` None takes the import's grid option.
    """

    model: dict[str, Any]
    batches: list[dict[str, Any]]
    license: str = "other"
    normalized: bool | None = None
    grid: str | None = None
    description: str = ""


class Importer(abc.ABC):
    """Base class of every importer. Subclasses set ``kind``, ``description``, ``repairs`` and implement :meth:`read`."""

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: repair name -> what it does; a defect is repaired only when its name is passed in ``repair``
    repairs: ClassVar[dict[str, str]] = {}

    def refuse_options(self, options: dict[str, Any], *, takes: tuple[str, ...] = ()) -> None:
        """Fail on options this importer does not take, naming the ones it does."""
        if options:
            raise ImportOptionError(f"{self.kind} import has no option(s) {sorted(options)}; it takes "
                                    f"{', '.join(takes) if takes else 'no options'}")

    @abc.abstractmethod
    def read(self, sources: list[Path], *, session: ImportSession, **options: Any) -> ImportPlan:
        """Read ``sources`` (existing paths) into a plan; record defects on ``session``."""


def register_importer(cls: type[Importer]) -> type[Importer]:
    """Class decorator: make ``cls`` available to :func:`get_importer` under ``cls.kind``."""
    if not (isinstance(cls, type) and issubclass(cls, Importer)):
        raise SpecError(f"{cls!r} is not an Importer subclass; derive it from eoembed.importers.Importer")
    if not cls.kind:
        raise SpecError(f"{cls.__name__} has no kind; set the class attribute")
    existing = _REGISTRY.get(cls.kind)
    if existing is not None and existing is not cls:
        raise SpecError(f"import kind {cls.kind!r} is already taken by {existing.__module__}.{existing.__qualname__}; pick another")
    _REGISTRY[cls.kind] = cls
    return cls


def get_importer(kind: str) -> Importer:
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise UnknownImporterError(f"no importer for {kind!r}; registered kinds: {', '.join(sorted(_REGISTRY)) or '(none)'}")
    return cls()


def list_importers() -> list[dict[str, Any]]:
    """One dict per registered importer: kind, description, repairs."""
    return [{"kind": cls.kind, "description": cls.description, "repairs": dict(cls.repairs)}
            for _, cls in sorted(_REGISTRY.items())]
