"""NumPy arrays and scalars in the safe codec, as an opt-in (``pip install 'statestore[numpy]'``).

NumPy is not a dependency of statestore: this module imports it only when
:func:`register_numpy` is called. An array is stored as its dtype string, its shape and
its bytes in C order, and rebuilt with ``numpy.frombuffer`` (a copy, writable): the
exact dtype (byte order included), shape and values come back. A NumPy scalar is stored
as its dtype and bytes. Arrays of ``object`` dtype are refused at save: their elements
are arbitrary Python objects, which the safe codec would have to pickle. A crafted
record whose bytes do not fit its dtype and shape is refused at load.
"""

from __future__ import annotations

from typing import Any

from ..errors import EncodeError
from ._safe import SafeCodec

__all__ = ["register_numpy"]

#: The names the records are stored under: keep them stable.
ARRAY = "numpy.ndarray"
SCALAR = "numpy.scalar"
#: Dimensions an array record may declare (NumPy's own limit is 64).
_MAX_DIMENSIONS = 64


def register_numpy(codec: SafeCodec) -> None:
    """Teach ``codec`` NumPy arrays (``ndarray``) and scalars (``numpy.generic``)."""
    import numpy as np  # noqa: PLC0415 - imported only by who asks: not a dependency

    def check_dtype(dtype: Any) -> Any:
        if dtype.hasobject:
            raise EncodeError(
                "a NumPy array of object dtype holds Python objects the safe codec does "
                "not store; convert it to a list, or use a numeric or string dtype"
            )
        return dtype

    def array_to(value: Any) -> list[Any]:
        dtype = check_dtype(value.dtype)
        return [dtype.str, list(value.shape), np.ascontiguousarray(value).tobytes()]

    def array_from(stored: Any) -> Any:
        dtype_name, shape, data = stored
        dtype = np.dtype(dtype_name)
        if dtype.hasobject or type(data) is not bytes or not _is_shape(shape):
            raise ValueError("stored array is not (dtype, shape, bytes)")
        count = 1
        for size in shape:
            count *= size
        if count * dtype.itemsize != len(data):
            raise ValueError("stored array's bytes do not fit its dtype and shape")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()

    def scalar_to(value: Any) -> list[Any]:
        return [check_dtype(value.dtype).str, value.tobytes()]

    def scalar_from(stored: Any) -> Any:
        dtype_name, data = stored
        dtype = np.dtype(dtype_name)
        if dtype.hasobject or type(data) is not bytes or len(data) != dtype.itemsize:
            raise ValueError("stored scalar is not (dtype, bytes)")
        return np.frombuffer(data, dtype=dtype)[0]

    codec.register(np.ndarray, ARRAY, array_to, array_from)
    # Every scalar type under one stored name: the dtype in the record says which it is.
    codec.register(np.float64, SCALAR, scalar_to, scalar_from)
    for scalar in _scalar_types(np):
        codec.alias(scalar, SCALAR)


def _is_shape(shape: Any) -> bool:
    return (
        isinstance(shape, list)
        and len(shape) <= _MAX_DIMENSIONS
        and all(type(size) is int and size >= 0 for size in shape)
    )


def _scalar_types(np: Any) -> list[type[Any]]:
    """Every concrete NumPy scalar type (the codec looks types up exactly)."""
    found: list[type[Any]] = []
    pending = [np.generic]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        if not kind.__subclasses__() and kind is not np.object_:
            found.append(kind)
    return found
