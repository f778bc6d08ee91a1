"""pytest plugin entry point (``pytest11``): fixtures from
:mod:`trio_s6tls.testing`. Placeholder until the testing library lands —
it must stay importable, since every pytest run in an environment with
trio_s6tls installed loads it."""
