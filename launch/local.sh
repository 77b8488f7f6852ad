#!/usr/bin/env bash
# Run a vla-jax command as N processes on this machine (multi-host training without the hosts).
#
#   launch/local.sh [--processes N] [--devices-per-process M] [--port P] [--cpu] [--dry-run] -- vla-jax train ...
#   launch/local.sh --devices 8 -- vla-jax train ...   (one process, 8 fake CPU devices)
#
# Each process gets VLA_JAX_COORDINATOR / VLA_JAX_NUM_PROCESSES / VLA_JAX_PROCESS_ID
# (read by vla_jax.distributed). With --cpu (or no accelerator), each process
# sees M fake CPU devices. Process 0's output goes to the terminal, the others'
# to logs/process_<i>.log under $LOG_DIR (default: ./launch_logs). Exits with
# the first non-zero status of any process.
set -euo pipefail

processes=1
devices=1
port=${VLA_JAX_PORT:-12355}
cpu=0
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes) processes=$2; shift 2 ;;
    --devices-per-process) devices=$2; shift 2 ;;
    --devices) devices=$2; cpu=1; shift 2 ;;  # one process with N fake CPU devices (older spelling)
    --port) port=$2; shift 2 ;;
    --cpu) cpu=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "local.sh: unknown option $1 (options: --processes N --devices-per-process M --port P --cpu --dry-run -- CMD)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "local.sh: no command after --" >&2
  exit 2
fi
log_dir=${LOG_DIR:-launch_logs}

env_for() {
  local i=$1
  local vars=""
  if [[ $processes -gt 1 ]]; then
    vars="VLA_JAX_COORDINATOR=localhost:${port} VLA_JAX_NUM_PROCESSES=${processes} VLA_JAX_PROCESS_ID=${i}"
  fi
  if [[ $cpu -eq 1 ]]; then
    vars+="${vars:+ }JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=${devices}"
  fi
  echo "$vars"
}

if [[ $dry_run -eq 1 ]]; then
  for ((i = 0; i < processes; i++)); do
    echo "env $(env_for "$i") $*"
  done
  exit 0
fi

if [[ $processes -eq 1 ]]; then
  exec env $(env_for 0) "$@"
fi

mkdir -p "$log_dir"
pids=()
for ((i = 0; i < processes; i++)); do
  if [[ $i -eq 0 ]]; then
    env $(env_for "$i") "$@" &
  else
    env $(env_for "$i") "$@" > "${log_dir}/process_${i}.log" 2>&1 &
  fi
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then
    rc=$?
    [[ $status -eq 0 ]] && status=$rc
  fi
done
exit $status
