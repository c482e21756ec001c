"""The index engines behind one contract, and their registry.

Every engine is one module of this package holding one :class:`Engine` subclass
decorated with :func:`register_engine` (``inverted``, ``seismic``, ``milvus``, ``bmp``,
``kannolo``); :func:`engine_names` and :func:`get_engine` find them (the modules are
imported on first use, their optional packages only when an engine is built or opened).
Building, opening and searching go through the class::

    from mmsparse.index.engines import get_engine

    engine_cls = get_engine("seismic")
    params = engine_cls.build(directory, sparse, params={"n_postings": 4000})
    engine = engine_cls.open(directory, params, n_docs=n, vocab_size=v)
    hits = engine.search_batch(queries, 10, query_cut=10)

Adding an engine is adding one file here: a module with a registered :class:`Engine`
subclass that declares its name, capabilities and parameters and implements
``_build(directory, request)``, ``_load()`` and ``_search(query)`` (see
:mod:`mmsparse.index.engines._base`).
"""

from mmsparse.index.engines._base import (
    CAPABILITIES,
    DEFAULT_ENGINE,
    SEARCH_MODES,
    BuildRequest,
    Engine,
    Param,
    Query,
    all_engines,
    dense_hint,
    discover,
    engine_names,
    get_engine,
    open_engine,
    register_engine,
)

__all__ = [
    "CAPABILITIES",
    "DEFAULT_ENGINE",
    "SEARCH_MODES",
    "BuildRequest",
    "Engine",
    "Param",
    "Query",
    "all_engines",
    "dense_hint",
    "describe_engines",
    "discover",
    "engine_names",
    "get_engine",
    "open_engine",
    "register_engine",
]


def describe_engines() -> list[dict]:
    """Every engine's description (``mmsparse index engines``): see :meth:`Engine.describe`."""
    return [cls.describe() for cls in all_engines()]
