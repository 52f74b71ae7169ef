"""The customer console (functions/console): a small static app served under ``/console``.

- ``assets``: the hand-written JS/CSS/icon shipped as package data, content-hashed URLs,
  gzip prepared once per container;
- ``pages``: the HTML shell (configuration in a ``<meta>`` tag, no inline script) and its
  Content-Security-Policy;
- ``usage``: the one aggregate the public API lacks (per day x model x key);
- ``routes``: ``GET /console``, ``GET /console/{page or asset}``, ``GET /console/api/usage/breakdown``.

The pages read and change everything through the public API on the same origin
(``/v1/balance``, ``/v1/keys``, ``/v1/billing/*`` ...) with the sign-in ID token as a Bearer
token kept in ``sessionStorage``: no cookie carries authority, so there is nothing to forge
cross-site (no CSRF surface). See docs/console.md.
"""
