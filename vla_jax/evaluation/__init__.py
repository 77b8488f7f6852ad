"""Closed-loop evaluation: a policy (in process or behind a server) acting in an environment of :mod:`vla_jax.envs`."""
