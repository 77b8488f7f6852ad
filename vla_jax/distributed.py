"""Multi-host start-up: ``jax.distributed.initialize`` from the environment.

- Explicit (any platform, and the only way on CPU): ``VLA_JAX_COORDINATOR``
  (``host:port`` of process 0), ``VLA_JAX_NUM_PROCESSES``,
  ``VLA_JAX_PROCESS_ID``; ``launch/local.sh`` sets them. On CPU the gloo
  collectives are switched on.
- TPU pods (``TPU_WORKER_HOSTNAMES`` / ``CLOUD_TPU_TASK_ID`` / ``MEGASCALE_*``)
  and SLURM jobs with more than one task (``SLURM_NTASKS``): JAX detects the
  cluster itself.
- Otherwise a single process: nothing to do.

Must run before anything else touches JAX devices.
"""

from __future__ import annotations

import os

import jax

from vla_jax.errors import ConfigError

EXPLICIT = ("VLA_JAX_COORDINATOR", "VLA_JAX_NUM_PROCESSES", "VLA_JAX_PROCESS_ID")
TPU_MARKERS = ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS")


def cluster_kind(env: dict[str, str] | None = None) -> str:
    """``explicit``, ``tpu``, ``slurm`` or ``single`` from the environment."""
    env = os.environ if env is None else env
    given = [k for k in EXPLICIT if env.get(k)]
    if given:
        missing = [k for k in EXPLICIT if not env.get(k)]
        if missing:
            raise ConfigError(f"multi-process start needs {EXPLICIT}; {given} are set but {missing} are not")
        return "explicit"
    if any(env.get(k) for k in TPU_MARKERS) and "," in env.get("TPU_WORKER_HOSTNAMES", ","):
        return "tpu"
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "slurm"
    return "single"


def initialize_from_env() -> str:
    """Initializes JAX's multi-process runtime as the environment says; returns the cluster kind."""
    kind = cluster_kind()
    if kind == "single":
        return kind
    if kind == "explicit":
        num, pid = int(os.environ["VLA_JAX_NUM_PROCESSES"]), int(os.environ["VLA_JAX_PROCESS_ID"])
        if not 0 <= pid < num:
            raise ConfigError(f"VLA_JAX_PROCESS_ID={pid} is not in [0, VLA_JAX_NUM_PROCESSES={num})")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used by CPU devices
        jax.distributed.initialize(os.environ["VLA_JAX_COORDINATOR"], num_processes=num, process_id=pid)
    else:
        jax.distributed.initialize()
    return kind
