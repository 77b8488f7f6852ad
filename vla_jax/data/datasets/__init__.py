"""Dataset specs and mixtures, one module per dataset or dataset family.

Every module in this package is imported by :func:`vla_jax.data.specs.discover`;
a module registers its specs with :func:`vla_jax.data.specs.register` (and
mixtures with :func:`vla_jax.data.specs.register_mixture`) at import time.
"""
