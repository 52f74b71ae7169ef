"""Money: pricing (Decimal arithmetic and THE rounding rule) and the ledger (credit, reserve,
settle, release, invariant checks). See docs/money.md."""
