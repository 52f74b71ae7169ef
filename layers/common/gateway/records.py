"""``@frozen`` and ``@record``: the gateway's value records, declared without compiling the dataclass methods
that one shared function does as well.

In CPython 3.12 ``@dataclass`` writes each method it generates as source text and compiles it with
its own ``exec`` when the class is created: ``__init__``, ``__repr__``, ``__eq__``, and with
``frozen=True`` also ``__hash__``, ``__setattr__`` and ``__delattr__``. Those compilations are most of
a record class's creation (~0.65 ms for a frozen one of six fields here), paid by every cold start for
every record class its modules declare (BENCHMARKS.md, issue 15, spawn4 and spawn5 lanes). (A record
without a docstring also gets one made from ``inspect.signature``: our records have docstrings.)

Here dataclass generates only ``__init__`` (the one method a request calls for every record it makes,
so it stays the compiled one); ``__repr__``, ``__eq__`` and ``__hash__`` are functions of this module,
shared by every record, which read the class's field names (kept on the class when it is created) and
do what the generated ones do: the same text, the same equality (only another instance of the very
same class is compared, over the fields with ``compare=True``, as tuples), the same hash (of the tuple
of the fields with ``compare=True`` or ``hash=True``), ``...`` for a recursive repr.

A ``@frozen`` class is a slotted dataclass with ``__init__``, ``__repr__``, ``__eq__`` and ``__hash__``:

- **Immutable for the type checker, not at run time.** mypy treats it as ``frozen=True`` (an
  assignment to a field is an error: ``typing.dataclass_transform``), which is how the code keeps
  it immutable; at run time an assignment is not refused (no generated ``__setattr__``).
- **Compared and hashed by value, as a frozen dataclass**: equal records stay equal, a record is
  still a valid default value of another record's field, a dict key or a set member.
- A class that defines its own ``__repr__`` keeps it (``adapters.contract.Target``: no key printed).

A ``@record`` class is a mutable slotted dataclass with ``__init__`` and ``__repr__``: with ``eq=True``
(the default) compared by value and unhashable, as ``@dataclass(slots=True)``; with ``eq=False``
compared and hashed by identity, as ``@dataclass(slots=True, eq=False)``.

``dataclasses.fields``, ``replace`` and ``asdict`` work as on any dataclass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from operator import attrgetter
from reprlib import recursive_repr
from typing import Any, TypeVar, cast, dataclass_transform, overload

T = TypeVar("T", bound=type[Any])


@recursive_repr()
def _repr(self: Any) -> str:
    """A dataclass's ``__repr__``: ``Name(field=value!r, ...)`` over the fields with ``repr=True``."""
    cls = self.__class__
    return cls.__qualname__ + "(" + ", ".join([f"{name}={getattr(self, name)!r}" for name in cls._record_repr]) + ")"


def _eq(self: Any, other: Any) -> Any:
    """A dataclass's ``__eq__``: the tuples of the compared fields of two instances of one class."""
    if other.__class__ is self.__class__:
        key = self.__class__._record_compare
        return key(self) == key(other)
    return NotImplemented


def _hash(self: Any) -> int:
    """A dataclass's ``__hash__`` (``frozen=True`` or ``unsafe_hash=True``): of the tuple of its hashed fields."""
    return hash(self.__class__._record_hash(self))


def _getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The tuple of these attributes of an instance (``attrgetter`` gives one value, not a tuple, for one name)."""
    if len(names) >= 2:
        return attrgetter(*names)
    return lambda obj: tuple(getattr(obj, name) for name in names)


def _finish(cls: T, *, repr: bool, eq: bool, hash: bool) -> T:
    own = cls.__dict__  # the methods the class body defined itself are kept (as dataclass keeps them)
    declared = fields(cls)
    added: dict[str, Any] = {}
    if repr and "__repr__" not in own:
        added.update(_record_repr=tuple(f.name for f in declared if f.repr), __repr__=_repr)
    if eq and "__eq__" not in own:
        added.update(_record_compare=_getter([f.name for f in declared if f.compare]), __eq__=_eq)
        if hash:
            added.update(_record_hash=_getter([f.name for f in declared if (f.compare if f.hash is None else f.hash)]),
                         __hash__=_hash)
        else:  # as dataclass(eq=True) without frozen or unsafe_hash: unhashable
            added["__hash__"] = None
    for name, value in added.items():
        setattr(cls, name, value)
    return cls


@overload
def frozen(cls: T, /) -> T: ...


@overload
def frozen(*, kw_only: bool = False) -> Callable[[T], T]: ...


@dataclass_transform(frozen_default=True)
def frozen(cls: T | None = None, /, *, kw_only: bool = False) -> T | Callable[[T], T]:
    """``@frozen`` or ``@frozen(kw_only=True)``: see the module docstring."""

    def wrap(c: T) -> T:
        return _finish(cast(T, dataclass(c, slots=True, kw_only=kw_only, repr=False, eq=False)),
                       repr=True, eq=True, hash=True)

    return wrap if cls is None else wrap(cls)


@overload
def record(cls: T, /) -> T: ...


@overload
def record(*, kw_only: bool = False, eq: bool = True) -> Callable[[T], T]: ...


@dataclass_transform()
def record(cls: T | None = None, /, *, kw_only: bool = False, eq: bool = True) -> T | Callable[[T], T]:
    """``@record``, ``@record(eq=False)``, ``@record(kw_only=True)``: see the module docstring."""

    def wrap(c: T) -> T:
        return _finish(cast(T, dataclass(c, slots=True, kw_only=kw_only, repr=False, eq=False)),
                       repr=True, eq=eq, hash=False)

    return wrap if cls is None else wrap(cls)
