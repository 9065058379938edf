"""The encoder registry, apart from the encoders that register in it.

Built-in encoders register when :mod:`eoembed.producers.encoders` imports them; other packages
register theirs through the ``eoembed.encoders`` entry-point group (name = ``module:Class``), read
the first time a name is not found or the encoders are listed::

    # a plugin's pyproject.toml
    [project.entry-points."eoembed.encoders"]
    my-encoder = "my_package.encoder:MyEncoder"
"""

from __future__ import annotations

from eoembed._errors import EncoderError, UnknownEncoderError

from .base import Encoder

__all__ = ["ENTRY_POINT_GROUP", "register_encoder", "get_encoder", "list_encoders"]

ENTRY_POINT_GROUP = "eoembed.encoders"

_REGISTRY: dict[str, type[Encoder]] = {}
_PLUGINS_LOADED = False


def register_encoder(cls: type[Encoder]) -> type[Encoder]:
    """Class decorator: make ``cls`` available to :func:`get_encoder` under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Encoder)):
        raise EncoderError(f"{cls!r} is not an Encoder subclass; derive it from eoembed.producers.encoders.Encoder")
    if not cls.name or not cls.version:
        raise EncoderError(f"{cls.__name__} has no name or version; set both class attributes")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise EncoderError(
            f"encoder name {cls.name!r} of {cls.__module__}.{cls.__qualname__} is already taken by "
            f"{existing.__module__}.{existing.__qualname__}; pick another name"
        )
    _REGISTRY[cls.name] = cls
    return cls


def load_plugins() -> None:
    """Register the encoders other installed packages declare in the entry-point group (once)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {point.name!r} = {point.value!r} of package {getattr(point.dist, 'name', '?')!r}"
        try:
            cls = point.load()
            if not (isinstance(cls, type) and issubclass(cls, Encoder)):
                raise EncoderError(f"{where} is not an Encoder subclass; derive it from eoembed.producers.encoders.Encoder")
            if cls.name != point.name:
                raise EncoderError(f"{where} gives an encoder named {cls.name!r}; the entry point's name must be "
                                   "the encoder's name")
            register_encoder(cls)
        except EncoderError:
            _PLUGINS_LOADED = False  # read again next time, so the error is not hidden by a half-filled registry
            raise
        except Exception as exc:  # a broken plugin names itself; the built-in encoders still work
            _PLUGINS_LOADED = False
            raise EncoderError(f"{where} ({ENTRY_POINT_GROUP}) cannot be imported: {exc}; fix or uninstall "
                               "that package") from exc


# Encoders named by a prefix and a path (users' own models, trained compressors), as ``module:Class``
# in the form of the entry points: the registry loads them by name and imports none of them itself.
PREFIXED = {
    "torchscript": "eoembed.producers.encoders.usermodel:UserModelEncoder",
    "module": "eoembed.producers.encoders.usermodel:UserModelEncoder",
    "checkpoint": "eoembed.producers.encoders.checkpoint:CheckpointEncoder",  # a compressor trained by `eoembed train`
}


def _load(target: str):
    """The object a ``module:attribute`` string names."""
    import importlib

    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_encoder(name: str, **options) -> Encoder:
    """A new encoder registered under ``name``, built with ``options``; ``torchscript:PATH`` and
    ``module:package.module:callable`` load users' own models (see :mod:`.usermodel`), ``checkpoint:PATH``
    a compressor trained by ``eoembed train`` (see :mod:`.checkpoint`)."""
    prefix = name.split(":", 1)[0]
    if prefix in PREFIXED and ":" in name:
        return _load(PREFIXED[prefix])(name, **options)
    if name not in _REGISTRY:
        load_plugins()
    cls = _REGISTRY.get(name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise UnknownEncoderError(f"no encoder named {name!r}; registered encoders: {known}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise EncoderError(f"encoder {name!r} does not take options {sorted(options)}: {exc}") from exc


def list_encoders() -> list[dict]:
    """One dict per registered encoder (built-in and plugins): name, version, description, dim (its rule in words)."""
    load_plugins()
    return [
        {"name": cls.name, "version": cls.version, "description": cls.description, "dim": cls.dim_rule}
        for _, cls in sorted(_REGISTRY.items())
    ]
