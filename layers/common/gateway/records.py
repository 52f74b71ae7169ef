"""``@frozen``: the gateway's immutable value records, declared without the dataclass methods nothing uses.

In CPython 3.12 ``@dataclass`` writes each method it generates as source text and compiles it with
its own ``exec`` when the class is created: ``__init__``, ``__repr__``, ``__eq__``, and with
``frozen=True`` also ``__hash__``, ``__setattr__`` and ``__delattr__``. Those compilations are most of
a record class's creation (~0.65 ms for a frozen one of six fields here, ~0.39 ms without
``__setattr__`` and ``__delattr__``), paid by every cold start for every record class its modules declare
(BENCHMARKS.md, issue 15, spawn4 lane). (A record without a docstring also gets one made from ``inspect.signature``: our
records have docstrings.)

A ``@frozen`` class is a slotted dataclass with ``__init__``, ``__repr__``, ``__eq__`` and ``__hash__``:

- **Immutable for the type checker, not at run time.** mypy treats it as ``frozen=True`` (an
  assignment to a field is an error: ``typing.dataclass_transform``), which is how the code keeps
  it immutable; at run time an assignment is not refused (no generated ``__setattr__``).
- **Compared and hashed by value, as a frozen dataclass** (``__eq__`` and ``__hash__`` over the
  fields, as ``frozen=True`` generates them: ``unsafe_hash``, safe because nothing assigns to a
  field): equal records stay equal, a record is still a valid default value of another record's
  field, a dict key or a set member.
- A class that defines its own ``__repr__`` keeps it (``adapters.contract.Target``: no key printed).

``dataclasses.fields``, ``replace`` and ``asdict`` work as on any dataclass. Mutable records that are
never compared use ``@dataclass(slots=True, eq=False)`` directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast, dataclass_transform, overload

T = TypeVar("T", bound=type[Any])


@overload
def frozen(cls: T, /) -> T: ...


@overload
def frozen(*, kw_only: bool = False) -> Callable[[T], T]: ...


@dataclass_transform(frozen_default=True)
def frozen(cls: T | None = None, /, *, kw_only: bool = False) -> T | Callable[[T], T]:
    """``@frozen`` or ``@frozen(kw_only=True)``: see the module docstring."""

    def wrap(c: T) -> T:  # a class with its own __repr__ keeps it (dataclass would compile one and not set it)
        return cast(T, dataclass(c, slots=True, unsafe_hash=True, kw_only=kw_only,
                                  repr="__repr__" not in c.__dict__))

    return wrap if cls is None else wrap(cls)
