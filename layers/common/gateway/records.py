"""``@frozen``: the gateway's immutable value records, declared without the dataclass methods nothing uses.

In CPython 3.12 ``@dataclass`` writes each method it generates as source text and compiles it with
its own ``exec`` when the class is created: ``__init__``, ``__repr__``, ``__eq__``, and with
``frozen=True`` also ``__hash__``, ``__setattr__`` and ``__delattr__``. Those compilations are most of
a record class's creation (~0.8 ms for a frozen one here, ~0.3 ms with ``__init__`` and ``__repr__``
alone), paid by every cold start for every record class its modules declare (BENCHMARKS.md, issue
15, spawn4 lane). (A record without a docstring also gets one made from ``inspect.signature``: our
records have docstrings.)

A ``@frozen`` class is a slotted dataclass with ``__init__`` and ``__repr__`` only:

- **Immutable for the type checker, not at run time.** mypy treats it as ``frozen=True`` (an
  assignment to a field is an error: ``typing.dataclass_transform``), which is how the code keeps
  it immutable; at run time an assignment is not refused (no generated ``__setattr__``).
- **Compared and hashed by identity** (no generated ``__eq__`` / ``__hash__``): no code compares
  or hashes these records by value. A record that is compared by value (``adapters.contract.Usage``,
  ``money.carried.Standing``) or whose value semantics are part of its contract (``auth.Principal``)
  stays a ``@dataclass(frozen=True)``.
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


@dataclass_transform(frozen_default=True, eq_default=False)
def frozen(cls: T | None = None, /, *, kw_only: bool = False) -> T | Callable[[T], T]:
    """``@frozen`` or ``@frozen(kw_only=True)``: see the module docstring."""

    def wrap(c: T) -> T:  # a class with its own __repr__ keeps it (dataclass would compile one and not set it)
        return cast(T, dataclass(c, slots=True, eq=False, kw_only=kw_only, repr="__repr__" not in c.__dict__))

    return wrap if cls is None else wrap(cls)
