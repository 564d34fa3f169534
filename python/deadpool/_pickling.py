"""cloudpickle where pickle refuses.

Tasks, results, exceptions and worker settings are pickled with the standard
``pickle`` first: it is the fastest and what nearly every task needs. Pickle
writes a function or class as a reference (module and name), so it refuses a
lambda, a closure, a class made inside a function, or a copy of a function
that is not the object its name leads to (what Dask hands an executor: the
user's function, shipped to the Dask worker by value and rebuilt there). Only
then is the object pickled again with cloudpickle, which writes such things by
value. The receiving side needs no flag to tell the two apart: cloudpickle's
output is an ordinary pickle whose reconstructors live in the ``cloudpickle``
package, so ``pickle.loads`` reads it wherever cloudpickle can be imported.

cloudpickle is imported here, on the first fallback, so that importing
deadpool (in the parent and in every zygote) and the hot path cost nothing
more.
"""

from __future__ import annotations

import functools
import os
import pickle

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from typing import Any, ClassVar

PROTOCOL = pickle.HIGHEST_PROTOCOL


def by_value(obj: Any) -> bytes:
    """``obj`` pickled with cloudpickle (raises what cloudpickle raises)."""
    import cloudpickle

    return cloudpickle.dumps(obj, PROTOCOL)


@functools.cache
def cloud_pickler_class() -> type[pickle.Pickler]:
    """cloudpickle's pickler, extended with the reducers ``multiprocessing``
    adds to its own (connections, sockets), for the worker settings."""
    import collections
    import multiprocessing.reduction

    import cloudpickle

    class CloudForkingPickler(cloudpickle.CloudPickler):
        # multiprocessing's reducers first. A class attribute: the C pickler
        # reads it when made, and cloudpickle's own class attribute would
        # shadow an assignment made in __init__ (as ForkingPickler makes it).
        dispatch_table: ClassVar[MutableMapping[Any, Any]] = collections.ChainMap(
            multiprocessing.reduction.ForkingPickler._extra_reducers,
            cloudpickle.CloudPickler.dispatch_table,
        )

    return CloudForkingPickler


def main_is_importable() -> bool:
    """Whether a fresh interpreter can import this process's ``__main__``, as
    ``multiprocessing.spawn.prepare`` does for a zygote: a script or a ``-m``
    module can, code typed at ``python -c``, stdin, the REPL or a notebook
    cannot. A function pickled by reference from an unimportable ``__main__``
    pickles without error here and fails to unpickle in the worker, so such
    payloads go by value."""
    import multiprocessing.spawn

    data = multiprocessing.spawn.get_preparation_data("deadpool")
    name = data.get("init_main_from_name")
    if name is not None:
        # prepare() skips a package's __main__ (python -m pkg).
        return not (name == "__main__" or name.endswith(".__main__"))
    path = data.get("init_main_from_path")
    if path is not None:
        # prepare() skips IPython's main script.
        return os.path.splitext(os.path.basename(path))[0] != "ipython"
    return False
