#!/usr/bin/env bash
# Run vla-jax on this machine, optionally with N fake CPU devices.
#   launch/local.sh [--devices N] -- vla-jax train --config experiments/demo.py --workdir workdirs/x
set -euo pipefail
devices=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices) devices="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [--devices N] -- COMMAND..." >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--devices N] -- COMMAND..." >&2; exit 2; }
if [[ -n "$devices" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"
fi
exec "$@"
