"""The account room: sign-in identities (JWT), API-key management, BYOK provider keys, balance and
usage views, and the admin operations. Route modules (``routes_*``) are thin; the logic lives in
``identity``, ``keys``, ``byok``, ``usage`` and ``admin`` so the ops CLI can reuse it.

Importing the package imports nothing else (the query path only needs ``byok``).
"""
