"""The safe default codec: MessagePack plus extension types, no code run while decoding.

Plain MessagePack loses types (a tuple comes back a list, a set cannot be written at
all), so every Python type that MessagePack cannot carry exactly is written as an
extension record whose code says which type to rebuild. Decoding only ever builds the
types listed in ``_EXT`` or registered explicitly by name: nothing is imported, nothing
is called that the stored bytes can choose.

Encoding takes the fast path through ``ormsgpack`` (Rust, about 2.5x faster than the
reference binding on small dicts) and falls back to ``msgpack`` only for the few values
ormsgpack refuses (dicts with non-``str`` keys). Both write the same wire format, so
one decoder reads either; decoding likewise tries ormsgpack first and msgpack second.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import fractions
import itertools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import ormsgpack

from ..errors import EncodeError

__all__ = ["SafeCodec"]


def _qualified(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# Extension codes. Never renumber: they are stored on disk.
_TUPLE = 1
_BIGINT = 2
_SET = 3
_FROZENSET = 4
_DATETIME = 5
_DATE = 6
_TIME = 7
_TIMEDELTA = 8
_DECIMAL = 9
_UUID = 10
_REGISTERED = 11
_DEQUE = 12
_COUNTER = 13
_ORDERED_DICT = 14
_DEFAULT_DICT = 15
_FRACTION = 16

#: defaultdict factories every codec knows, by the name stored with the value.
_BUILTIN_FACTORIES: dict[str, Callable[[], Any]] = {
    factory.__name__: factory
    for factory in (list, dict, set, frozenset, tuple, int, float, str, bytes, bool)
}

#: Extension records (tuples, sets, dates, registered types...) nest at most this deep.
#: Encoding refuses deeper values with EncodeError, so everything written reads back;
#: decoding refuses deeper bytes, so hostile input cannot exhaust the stack. Values
#: nested deeper than this could not be written by earlier releases in practice either
#: (each level costs three Python frames of the interpreter's 1,000).
MAX_DEPTH = 100

# Everything ormsgpack would otherwise write in a lossy native form goes to `default`.
#: What the fast path may raise on a value it cannot take: the slow path decides.
_FAST_PATH_ERRORS = (
    EncodeError, TypeError, ormsgpack.MsgpackEncodeError, RecursionError, OverflowError,
)  # fmt: skip
_ORMSGPACK_OPTIONS = (
    ormsgpack.OPT_PASSTHROUGH_TUPLE
    | ormsgpack.OPT_PASSTHROUGH_BIG_INT
    | ormsgpack.OPT_PASSTHROUGH_DATETIME
    | ormsgpack.OPT_PASSTHROUGH_UUID
    | ormsgpack.OPT_PASSTHROUGH_SUBCLASS
    | ormsgpack.OPT_PASSTHROUGH_DATACLASS
    | ormsgpack.OPT_PASSTHROUGH_ENUM
)


@dataclass(frozen=True)
class _Registration:
    name: str
    cls: type[Any]
    to_primitive: Callable[[Any], Any]
    from_primitive: Callable[[Any], Any]


def _encode_tz(tz: dt.tzinfo | None, sample: dt.datetime | None) -> Any:
    """A zone name for a named ZoneInfo (keeps DST rules), else a fixed UTC offset in
    microseconds; a zone that gives neither is refused, never stored as naive."""
    if tz is None:
        return None
    if isinstance(tz, ZoneInfo) and tz.key is not None:
        return tz.key
    offset = tz.utcoffset(None if isinstance(tz, dt.timezone) else sample)
    if offset is None:  # a keyless ZoneInfo on a time, a tzinfo without an offset
        raise EncodeError(
            f"time zone {tz!r} has no name and no fixed offset here; use a named "
            "ZoneInfo or datetime.timezone"
        )
    return offset // dt.timedelta(microseconds=1)


def _decode_tz(value: Any) -> dt.tzinfo | None:
    if value is None:
        return None
    if isinstance(value, str):
        return ZoneInfo(value)
    if value == 0:
        return dt.UTC
    return dt.timezone(dt.timedelta(microseconds=value))


class SafeCodec:
    """MessagePack with exact round trips of the standard types; further types by registration.

    Round-trips exactly: ``None, bool, int`` (any size), ``float`` (nan, inf),
    ``str, bytes, list, tuple, dict`` (any hashable keys), ``set, frozenset,
    datetime, date, time, timedelta, Decimal, UUID``, ``collections.deque`` (with its
    ``maxlen``), ``Counter``, ``OrderedDict``, ``defaultdict`` (its factory a builtin
    type or one given to :meth:`register_factory`) and ``fractions.Fraction``, nested
    freely. An aware
    datetime keeps its offset (or its named ``ZoneInfo`` zone; a ``ZoneInfo`` without a
    key, from ``ZoneInfo.from_file``, keeps its offset at that instant as a fixed zone,
    and a zone that has no offset is refused). Any other type, including
    subclasses of the types above, raises :class:`~statestore.errors.EncodeError`
    unless registered::

        codec = SafeCodec()
        codec.register(Point, "geo.Point", lambda p: [p.x, p.y], lambda v: Point(*v))
        codec.register_enum(Color)            # members stored by name
        codec.register_dataclass(Reading)     # fields stored by name

    NumPy arrays and scalars: :func:`statestore.codecs.numpy.register_numpy`.
    """

    name = "safe-msgpack"
    #: Each encoding is exactly one MessagePack value, and decoding a MessagePack array
    #: of encodings gives the list of their values: the storage layout stores a pack's
    #: states as one array and decodes it in one call.
    msgpack_native = True

    def __init__(self) -> None:
        self._by_type: dict[type[Any], _Registration] = {}
        self._by_name: dict[str, _Registration] = {}
        self._factories: dict[str, Callable[[], Any]] = dict(_BUILTIN_FACTORIES)

    def register(
        self,
        cls: type[Any],
        name: str,
        to_primitive: Callable[[Any], Any],
        from_primitive: Callable[[Any], Any],
    ) -> None:
        """Teach the codec one more type.

        ``to_primitive`` turns an instance into a value the codec already knows;
        ``from_primitive`` rebuilds the instance. ``name`` is stored with every
        value, so keep it stable across releases of your code.
        """
        if not isinstance(name, str) or not name:
            raise TypeError("a registered type needs a non-empty str name")
        if name in self._by_name and self._by_name[name].cls is not cls:
            raise ValueError(f"the name {name!r} is already registered for another type")
        registration = _Registration(name, cls, to_primitive, from_primitive)
        self._by_type[cls] = registration
        self._by_name[name] = registration

    def alias(self, cls: type[Any], name: str) -> None:
        """Encode ``cls`` as the type already registered under ``name`` is (for a family
        of types one record describes, such as NumPy's scalars)."""
        registration = self._by_name.get(name)
        if registration is None:
            raise ValueError(f"no type is registered under {name!r}")
        self._by_type[cls] = registration

    def register_enum(self, cls: type[enum.Enum], name: str | None = None) -> None:
        """Teach the codec the members of an ``Enum`` class: stored by member name, under
        ``name`` (default: the class's module and qualified name)."""
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            raise TypeError(f"{cls!r} is not an Enum class")
        self.register(cls, name or _qualified(cls), lambda m: m.name, lambda n: cls[n])

    def register_dataclass(self, cls: type[Any], name: str | None = None) -> None:
        """Teach the codec a dataclass: stored as its fields by name (each a value the
        codec knows), rebuilt by its ``__init__`` (fields with ``init=False`` are set
        after), under ``name`` (default: the class's module and qualified name)."""
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"{cls!r} is not a dataclass")
        fields = dataclasses.fields(cls)
        given = [f.name for f in fields if f.init]
        after = [f.name for f in fields if not f.init]

        def to_primitive(value: Any) -> dict[str, Any]:
            return {f.name: getattr(value, f.name) for f in fields}

        def from_primitive(stored: Any) -> Any:
            if not isinstance(stored, dict) or set(stored) != {f.name for f in fields}:
                raise ValueError(f"stored {cls.__qualname__} has other fields")
            made = cls(**{key: stored[key] for key in given})
            for key in after:
                object.__setattr__(made, key, stored[key])  # frozen ones too
            return made

        self.register(cls, name or _qualified(cls), to_primitive, from_primitive)

    def register_factory(self, factory: Callable[[], Any], name: str) -> None:
        """Teach the codec a ``defaultdict`` default factory (``list``, ``int``, ``set``
        and the other builtin types are known already), stored by ``name``."""
        if not isinstance(name, str) or not name:
            raise TypeError("a registered factory needs a non-empty str name")
        if self._factories.get(name, factory) is not factory:
            raise ValueError(f"the name {name!r} is already registered for another factory")
        self._factories[name] = factory

    def _factory_name(self, factory: Any) -> str:
        for name, known in self._factories.items():
            if known is factory:
                return name
        raise EncodeError(
            f"cannot encode a defaultdict whose default factory is {factory!r}; register "
            "it with SafeCodec.register_factory(factory, name)"
        )

    # -- encoding -------------------------------------------------------------------

    def encode(self, value: object) -> bytes:
        try:
            # One C call for a state of plain containers; a _Writer, which counts the
            # nesting of extension records, is made only when the first one is met.
            packed: bytes = ormsgpack.packb(
                value, default=self._first_ext, option=_ORMSGPACK_OPTIONS
            )
        except EncodeError:
            raise
        except (TypeError, ormsgpack.MsgpackEncodeError, RecursionError, OverflowError):
            pass  # e.g. a dict with non-str keys: the reference binding writes those
        else:
            return packed
        try:
            return _Writer(self, fast=False).pack(value)
        except EncodeError:
            raise
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise EncodeError(f"cannot encode {type(value).__name__}: {exc}") from None

    def encode_many(self, values: Iterable[object]) -> list[bytes]:
        """``[encode(value) for value in values]``, without a Python call per value when
        they are plain containers: what a savepoint of many states costs."""
        values = list(values)
        # Positional arguments through map: no Python frame and no keyword parsing per
        # value (as fast as one packb call over the whole list, and the boundaries known).
        default, option = itertools.repeat(self._first_ext), itertools.repeat(_ORMSGPACK_OPTIONS)
        try:
            return list(map(ormsgpack.packb, values, default, option))
        except _FAST_PATH_ERRORS:
            return [self.encode(value) for value in values]  # the path that names a failure

    def _first_ext(self, value: Any) -> ormsgpack.Ext:
        """ormsgpack's ``default`` at the top level: ``value`` is one level deep.

        The common cases cost one call: a leaf (a date, a ``Decimal``, ...) is encoded
        directly, and a tuple or set of plain values in one C call; anything else (an
        extension inside, a registered type) goes through a :class:`_Writer`, which
        counts the nesting. Either way the bytes are the same.
        """
        cls = type(value)
        leaf = _LEAF_EXTS.get(cls)
        if leaf is not None:
            return leaf(value)
        code = _SEQUENCE_CODES.get(cls)
        if code is not None:
            try:
                return ormsgpack.Ext(code, ormsgpack.packb(list(value), None, _ORMSGPACK_OPTIONS))
            except (TypeError, ormsgpack.MsgpackEncodeError):
                pass  # an element needs the hooks: the writer below
        writer = _Writer(self, fast=True)
        writer.depth = 1
        return writer._ormsgpack_ext(value)

    def _ext_payload(self, value: Any, pack: Callable[[Any], bytes]) -> tuple[int, bytes]:
        cls = type(value)
        if cls is tuple:
            return _TUPLE, pack(list(value))
        if cls is int:  # only reached when the int does not fit in 64 bits
            return _BIGINT, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)
        if cls is set:
            return _SET, pack(list(value))
        if cls is frozenset:
            return _FROZENSET, pack(list(value))
        if cls is dt.datetime:
            fields = [value.year, value.month, value.day, value.hour, value.minute]
            fields += [value.second, value.microsecond, value.fold, _encode_tz(value.tzinfo, value)]
            return _DATETIME, pack(fields)
        if cls is dt.date:
            return _DATE, pack([value.year, value.month, value.day])
        if cls is dt.time:
            fields = [value.hour, value.minute, value.second, value.microsecond, value.fold]
            return _TIME, pack([*fields, _encode_tz(value.tzinfo, None)])
        if cls is dt.timedelta:
            return _TIMEDELTA, pack([value.days, value.seconds, value.microseconds])
        if cls is Decimal:
            return _DECIMAL, str(value).encode()
        if cls is uuid.UUID:
            return _UUID, value.bytes
        if cls is collections.deque:
            return _DEQUE, pack([value.maxlen, list(value)])
        if cls is collections.Counter:
            return _COUNTER, pack([[key, count] for key, count in value.items()])
        if cls is collections.OrderedDict:
            return _ORDERED_DICT, pack([[key, item] for key, item in value.items()])
        if cls is collections.defaultdict:
            pairs = [[key, item] for key, item in value.items()]
            return _DEFAULT_DICT, pack([self._factory_name(value.default_factory), pairs])
        if cls is fractions.Fraction:
            return _FRACTION, pack([value.numerator, value.denominator])
        registration = self._by_type.get(cls)
        if registration is not None:
            return _REGISTERED, pack([registration.name, registration.to_primitive(value)])
        how = "SafeCodec.register()"
        if isinstance(value, enum.Enum):
            how = "SafeCodec.register_enum()"
        elif dataclasses.is_dataclass(value):
            how = "SafeCodec.register_dataclass()"
        raise EncodeError(
            f"cannot encode {cls.__module__}.{cls.__qualname__}; register it with {how} "
            "or use another codec"
        )

    # -- decoding -------------------------------------------------------------------

    def decode(self, data: bytes | memoryview) -> object:
        """Decode one value; raises ``ValueError`` (or another exception) on bad bytes.

        One decoder reads the whole value, nested extension records included: ormsgpack
        first, and when it refuses anything (an extension-typed map key, say) msgpack
        once for the whole value. Retrying per nesting level would double the work at
        every level, exponential in the depth; this is at most two linear passes.
        """
        try:
            return _Reader(self, fast=True).unpack(data)
        except (ValueError, TypeError, ormsgpack.MsgpackDecodeError):
            return _Reader(self, fast=False).unpack(data)

    def _from_ext(self, code: int, payload: bytes, unpack: Callable[[bytes], Any]) -> Any:
        if code == _TUPLE:
            return tuple(unpack(payload))
        if code == _BIGINT:
            return int.from_bytes(payload, "big", signed=True)
        if code == _SET:
            return set(unpack(payload))
        if code == _FROZENSET:
            return frozenset(unpack(payload))
        if code == _DATETIME:
            y, mo, d, h, mi, s, us, fold, tz = unpack(payload)
            return dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_decode_tz(tz), fold=fold)
        if code == _DATE:
            return dt.date(*unpack(payload))
        if code == _TIME:
            h, mi, s, us, fold, tz = unpack(payload)
            return dt.time(h, mi, s, us, tzinfo=_decode_tz(tz), fold=fold)
        if code == _TIMEDELTA:
            days, seconds, micros = unpack(payload)
            return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if code == _DECIMAL:
            return Decimal(bytes(payload).decode())
        if code == _UUID:
            return uuid.UUID(bytes=bytes(payload))
        if code in _MAPPING_CODES:
            pairs = unpack(payload)
            factory = None
            if code == _DEFAULT_DICT:
                name, pairs = pairs
                factory = self._factories.get(name) if type(name) is str else None
                if factory is None:
                    raise ValueError(f"stored defaultdict has an unregistered factory {name!r}")
            if (
                type(pairs) is not list
                or set(map(type, pairs)) - {list}
                or set(map(len, pairs)) - {2}
            ):
                raise ValueError("stored mapping is not a list of pairs")
            made = _MAPPING_CODES[code]() if factory is None else collections.defaultdict(factory)
            for key, item in pairs:
                made[key] = item
            return made
        if code == _DEQUE:
            maxlen, items = unpack(payload)
            if (maxlen is not None and (type(maxlen) is not int or maxlen < 0)) or type(
                items
            ) is not list:
                raise ValueError("stored deque is not (maxlen, items)")
            return collections.deque(items, maxlen)
        if code == _FRACTION:
            numerator, denominator = unpack(payload)
            if type(numerator) is not int or type(denominator) is not int:
                raise ValueError("stored fraction is not two ints")
            return fractions.Fraction(numerator, denominator)
        if code == _REGISTERED:
            name, primitive = unpack(payload)
            registration = self._by_name.get(name)
            if registration is None:
                raise ValueError(f"stored value has unregistered type {name!r}")
            return registration.from_primitive(primitive)
        raise ValueError(f"unknown extension code {code}")


class _Writer:
    """One encoder for one top-level value, counting extension nesting against MAX_DEPTH."""

    __slots__ = ("codec", "depth", "fast")

    def __init__(self, codec: SafeCodec, *, fast: bool) -> None:
        self.codec = codec
        self.fast = fast
        self.depth = 0

    def pack(self, value: Any) -> bytes:
        if self.depth >= MAX_DEPTH:
            raise EncodeError(
                f"values nested deeper than {MAX_DEPTH} levels of tuples, sets, dates or "
                "registered types cannot be stored"
            )
        self.depth += 1
        try:
            if self.fast:
                packed: bytes = ormsgpack.packb(
                    value, default=self._ormsgpack_ext, option=_ORMSGPACK_OPTIONS
                )
                return packed
            packer = msgpack.Packer(default=self._msgpack_ext, strict_types=True, use_bin_type=True)
            return bytes(packer.pack(value))
        finally:
            self.depth -= 1

    def _ormsgpack_ext(self, value: Any) -> ormsgpack.Ext:
        return ormsgpack.Ext(*self.codec._ext_payload(value, self.pack))

    def _msgpack_ext(self, value: Any) -> msgpack.ExtType:
        return msgpack.ExtType(*self.codec._ext_payload(value, self.pack))


class _Reader:
    """One decoder for one top-level value, counting extension nesting against MAX_DEPTH."""

    __slots__ = ("codec", "depth", "fast")

    def __init__(self, codec: SafeCodec, *, fast: bool) -> None:
        self.codec = codec
        self.fast = fast
        self.depth = 0

    def unpack(self, data: bytes | memoryview) -> Any:
        if self.depth >= MAX_DEPTH:
            raise ValueError(f"extension records nested deeper than {MAX_DEPTH} levels")
        self.depth += 1
        try:
            if self.fast:
                return ormsgpack.unpackb(
                    data, ext_hook=self._ext, option=ormsgpack.OPT_NON_STR_KEYS
                )
            return msgpack.unpackb(
                data, ext_hook=self._ext, strict_map_key=False, raw=False, use_list=True
            )
        finally:
            self.depth -= 1

    def _ext(self, code: int, payload: bytes) -> Any:
        leaf = _LEAF_VALUES.get(code)  # a leaf holds no extension: decoded in one call
        if leaf is not None:
            return leaf(payload)
        return self.codec._from_ext(code, payload, self.unpack)


# -- leaves: values whose encoding holds no other extension record -------------------
#
# Written and read by these functions in one step each, without the nesting count a
# container needs; they give exactly the bytes (and values) of the general path in
# SafeCodec._ext_payload / _from_ext, which still handles them inside containers.


def _datetime_ext(value: dt.datetime) -> ormsgpack.Ext:
    fields = [value.year, value.month, value.day, value.hour, value.minute, value.second]
    fields += [value.microsecond, value.fold, _encode_tz(value.tzinfo, value)]
    return ormsgpack.Ext(_DATETIME, ormsgpack.packb(fields))


def _date_ext(value: dt.date) -> ormsgpack.Ext:
    return ormsgpack.Ext(_DATE, ormsgpack.packb([value.year, value.month, value.day]))


def _time_ext(value: dt.time) -> ormsgpack.Ext:
    fields = [value.hour, value.minute, value.second, value.microsecond, value.fold]
    return ormsgpack.Ext(_TIME, ormsgpack.packb([*fields, _encode_tz(value.tzinfo, None)]))


def _timedelta_ext(value: dt.timedelta) -> ormsgpack.Ext:
    return ormsgpack.Ext(
        _TIMEDELTA, ormsgpack.packb([value.days, value.seconds, value.microseconds])
    )


def _bigint_ext(value: int) -> ormsgpack.Ext:  # only ints past 64 bits reach a hook
    return ormsgpack.Ext(_BIGINT, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


_LEAF_EXTS: dict[type[Any], Callable[[Any], ormsgpack.Ext]] = {
    dt.datetime: _datetime_ext,
    dt.date: _date_ext,
    dt.time: _time_ext,
    dt.timedelta: _timedelta_ext,
    Decimal: lambda value: ormsgpack.Ext(_DECIMAL, str(value).encode()),
    uuid.UUID: lambda value: ormsgpack.Ext(_UUID, value.bytes),
    int: _bigint_ext,
}
_SEQUENCE_CODES: dict[type[Any], int] = {tuple: _TUPLE, set: _SET, frozenset: _FROZENSET}
#: The dict types stored as lists of pairs, by extension code (defaultdict has its factory).
_MAPPING_CODES: dict[int, Callable[[], Any]] = {
    _COUNTER: collections.Counter,
    _ORDERED_DICT: collections.OrderedDict,
    _DEFAULT_DICT: dict,
}


def _datetime_value(payload: bytes) -> dt.datetime:
    y, mo, d, h, mi, s, us, fold, tz = ormsgpack.unpackb(payload)
    return dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_decode_tz(tz), fold=fold)


def _time_value(payload: bytes) -> dt.time:
    h, mi, s, us, fold, tz = ormsgpack.unpackb(payload)
    return dt.time(h, mi, s, us, tzinfo=_decode_tz(tz), fold=fold)


def _timedelta_value(payload: bytes) -> dt.timedelta:
    days, seconds, micros = ormsgpack.unpackb(payload)
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


_LEAF_VALUES: dict[int, Callable[[bytes], Any]] = {
    _DATETIME: _datetime_value,
    _DATE: lambda payload: dt.date(*ormsgpack.unpackb(payload)),
    _TIME: _time_value,
    _TIMEDELTA: _timedelta_value,
    _DECIMAL: lambda payload: Decimal(bytes(payload).decode()),
    _UUID: lambda payload: uuid.UUID(bytes=bytes(payload)),
    _BIGINT: lambda payload: int.from_bytes(payload, "big", signed=True),
}
