"""``gateway.records.frozen``: a slotted dataclass with ``__init__``, ``__repr__``, ``__eq__`` and
``__hash__``, immutable for mypy (issue 15, spawn4: fewer generated methods compiled at a cold start)."""

from __future__ import annotations

import dataclasses
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.money.ledger import Settlement
from gateway.money.pricing import LongContextPrice, ModelPrice
from gateway.records import frozen, record


@frozen
class _Point:
    """A test record."""

    x: int
    label: str = "p"


@frozen(kw_only=True)
class _Named:
    """A keyword-only test record."""

    name: str


@frozen
class _Secret:
    """A test record with its own repr."""

    key: str

    def __repr__(self) -> str:
        return "_Secret(key='***')"


def test_a_frozen_record_is_a_slotted_dataclass_with_init_and_repr() -> None:
    p = _Point(1)
    assert (p.x, p.label) == (1, "p")
    assert repr(p) == "_Point(x=1, label='p')"
    assert [f.name for f in dataclasses.fields(p)] == ["x", "label"]
    assert dataclasses.replace(p, x=2).x == 2 and p.x == 1
    assert dataclasses.asdict(p) == {"x": 1, "label": "p"}
    assert not hasattr(p, "__dict__")  # slots
    with pytest.raises(TypeError):
        _Named("n")  # type: ignore[misc]
    assert _Named(name="n").name == "n"


def test_generated_methods_are_those_of_a_frozen_dataclass_but_setattr_and_delattr() -> None:
    for cls in (_Point, _Named, ModelPrice, LongContextPrice, Settlement):
        own = set(vars(cls))
        assert {"__init__", "__repr__", "__eq__", "__hash__"} <= own, cls
        assert not own & {"__setattr__", "__delattr__"}, cls
    a, b = _Point(1), _Point(1)
    assert a == b and a != _Point(2) and a != (1, "p")  # by value, as the frozen dataclass did
    assert hash(a) == hash(b) == hash((1, "p")) and len({a, b, _Point(2)}) == 2  # by value too


def test_a_record_with_its_own_repr_keeps_it() -> None:
    assert repr(_Secret("sk-live")) == "_Secret(key='***')"


def test_a_subclass_record_inherits_fields_and_its_base_checks() -> None:
    base = ModelPrice(prompt=Decimal("0.000001"), completion=Decimal("0.000002"))
    tiered = LongContextPrice.tiered(base, threshold=200_000, prompt_factor=Decimal(2),
                                     completion_factor=Decimal("1.5"))
    assert tiered.prompt == base.prompt and tiered.threshold == 200_000
    assert tiered.for_prompt(200_001).prompt == Decimal("0.000002")
    with pytest.raises(TypeError):
        ModelPrice(prompt=0.1, completion=Decimal(0))  # type: ignore[arg-type]  # floats refused (__post_init__)


def test_mypy_refuses_an_assignment_to_a_frozen_record(tmp_path: Path) -> None:
    """What keeps a record immutable now that run time does not refuse an assignment."""
    from mypy import api

    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent("""
        from decimal import Decimal
        from gateway.money.pricing import ModelPrice
        from gateway.records import frozen

        @frozen
        class P:
            x: int

        P(1).x = 2
        ModelPrice(prompt=Decimal(1), completion=Decimal(1)).prompt = Decimal(2)
    """))
    root = Path(__file__).resolve().parents[2]
    out, err, status = api.run([str(snippet), "--no-incremental", "--follow-imports=silent",
                                "--config-file", str(root / "pyproject.toml"),
                                "--cache-dir", str(tmp_path / "mypy-cache")])
    assert status == 1, out + err
    assert out.count("is read-only") == 2, out


# ``__repr__``, ``__eq__`` and ``__hash__`` are shared functions of ``gateway.records`` (issue 15, spawn5):
# each must give what the dataclass-generated method gives, field options included.
@frozen
class _Options:
    """A record with field options."""

    a: int
    b: list[int] = dataclasses.field(default_factory=list, compare=False)
    c: str = dataclasses.field(default="c", repr=False)
    d: int = dataclasses.field(default=0, hash=False)


@dataclasses.dataclass(frozen=True, slots=True)
class _OptionsGenerated:
    """The same record as dataclass generates it."""

    a: int
    b: list[int] = dataclasses.field(default_factory=list, compare=False)
    c: str = dataclasses.field(default="c", repr=False)
    d: int = dataclasses.field(default=0, hash=False)


@record(kw_only=True)
class _Counts:
    """A mutable record compared by value."""

    n: int
    m: int = 0


@record(eq=False)
class _Box:
    """A mutable record compared by identity."""

    item: object = None


def test_shared_methods_give_what_the_generated_ones_give() -> None:
    values = [(1, [1], "x", 0), (1, [2], "x", 0), (1, [1], "y", 0), (1, [1], "x", 5), (2, [1], "x", 0)]
    for left in values:
        ours, theirs = _Options(*left), _OptionsGenerated(*left)
        assert repr(ours) == repr(theirs).replace("_OptionsGenerated", "_Options")
        assert hash(ours) == hash(theirs)
        for right in values:
            assert (ours == _Options(*right)) is (theirs == _OptionsGenerated(*right))
    assert _Options(1) != _OptionsGenerated(1) and _Options(1).__eq__((1,)) is NotImplemented
    assert [f.name for f in dataclasses.fields(_Options)] == ["a", "b", "c", "d"]
    one = _Named(name="n")  # one compared field: a tuple of one, as dataclass compares and hashes it
    assert one == _Named(name="n") and hash(one) == hash(("n",))
    nan = float("nan")  # fields compared as tuples are (identity first): a NaN field equals itself
    assert _Named(name=nan) == _Named(name=nan)  # type: ignore[arg-type]


def test_a_mutable_record_is_compared_as_its_dataclass_would_be() -> None:
    a = _Counts(n=1)
    assert a == _Counts(n=1, m=0) and a != _Counts(n=1, m=1) and repr(a) == "_Counts(n=1, m=0)"
    with pytest.raises(TypeError):
        hash(a)  # eq without frozen: unhashable, as a dataclass
    a.m = 2
    assert a == _Counts(n=1, m=2)
    box = _Box()
    assert box != _Box() and box == box and hash(box) == object.__hash__(box)
    box.item = box
    assert repr(box) == "_Box(item=...)"  # a recursive repr, as dataclass writes it


def test_records_on_the_query_path_keep_their_dataclass_equality() -> None:
    from gateway.adapters.contract import DirectModel, Usage
    from gateway.money.carried import Standing
    from gateway.money.ledger import UsageRecord

    assert Usage(prompt_tokens=1) == Usage(prompt_tokens=1) and Usage(prompt_tokens=1) != Usage(prompt_tokens=2)
    assert DirectModel("p", "m") == DirectModel("p", "m") and len({DirectModel("p", "m"), DirectModel("p", "m")}) == 1
    fields_of = {f.name: f for f in dataclasses.fields(Standing)}
    assert set(fields_of) and Standing.__hash__ is not None
    assert UsageRecord.__hash__ is None and Usage.__hash__ is None  # mutable, compared by value: unhashable
