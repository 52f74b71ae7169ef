"""The money core: prices and THE rounding rule (``pricing``), holds (``holds``), the credit ledger
(``ledger``: credit, reserve, settle, release, orphans, invariant checks), how amounts appear in
JSON (``format``) and the orphan sweeper's Lambda handler (``sweeper``). See docs/money.md.

Used by every room that moves or shows money (chat, account, catalog, billing); imports nothing
above the kernel (db, config, errors, observability)."""
