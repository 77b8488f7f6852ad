#!/usr/bin/env bash
# Run a vla-jax command as a workload on a GKE TPU cluster with xpk (https://github.com/AI-Hypercomputer/xpk).
#
#   launch/xpk.sh --cluster CLUSTER --zone ZONE --type v5p-128 [--slices 1] [--image IMAGE] [--workload NAME]
#                 [--dry-run] -- vla-jax train --config experiments/X.py --workdir gs://...
#
# The image must have vla_jax installed (e.g. built from this repository with
# `pip install . 'jax[tpu]'`). xpk starts one container per TPU host; JAX finds
# the others itself (vla_jax.distributed). --dry-run prints the xpk command.
set -euo pipefail

cluster="" zone="" type="" slices=1 image="" workload="vla-jax-$(date +%Y%m%d-%H%M%S)" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster) cluster=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --type) type=$2; shift 2 ;;
    --slices) slices=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --workload) workload=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "xpk.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -z $cluster || -z $zone || -z $type ]] && { echo "xpk.sh: --cluster, --zone and --type are required" >&2; exit 2; }
[[ $# -eq 0 ]] && { echo "xpk.sh: no command after --" >&2; exit 2; }

command=$(printf '%q ' "$@")
args=(xpk workload create --cluster="$cluster" --zone="$zone" --workload="$workload"
      --tpu-type="$type" --num-slices="$slices" --command="$command")
[[ -n $image ]] && args+=(--docker-image="$image")
if [[ $dry_run -eq 1 ]]; then printf '%q ' "${args[@]}"; echo; else "${args[@]}"; fi
