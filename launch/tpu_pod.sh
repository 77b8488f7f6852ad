#!/usr/bin/env bash
# Create a Cloud TPU VM pod slice, install vla_jax on every worker, run a command on all of them, delete it.
#
#   launch/tpu_pod.sh create --name NAME --zone ZONE --type v5p-128 [--version v2-alpha-tpuv5] [--spot]
#   launch/tpu_pod.sh install --name NAME --zone ZONE --repo GIT_URL
#   launch/tpu_pod.sh run --name NAME --zone ZONE -- vla-jax train --config experiments/X.py --workdir gs://...
#   launch/tpu_pod.sh delete --name NAME --zone ZONE
#   launch/tpu_pod.sh all --name NAME --zone ZONE --type v5p-128 --repo GIT_URL -- CMD   (create, install, run, delete)
#
# --dry-run prints the gcloud commands instead of running them. JAX finds the
# other workers itself on a pod (vla_jax.distributed), and each worker reads its
# own share of the data files. Preemption (spot) sends SIGTERM: the run saves
# and exits 0; run the same command again on a new slice to resume from the
# workdir (use a gs:// workdir so every worker and the next slice see it).
set -euo pipefail

action=${1:-}
[[ -z $action ]] && { echo "tpu_pod.sh: need an action: create | install | run | delete | all" >&2; exit 2; }
shift
name="" zone="" type="" version="v2-alpha-tpuv5" repo="" spot="" dry_run=0
project_flag=${GCLOUD_PROJECT:+--project=$GCLOUD_PROJECT}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --type) type=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --repo) repo=$2; shift 2 ;;
    --spot) spot="--spot"; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -z $name || -z $zone ]] && { echo "tpu_pod.sh: --name and --zone are required" >&2; exit 2; }

run() {
  if [[ $dry_run -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" $project_flag --worker=all --command="$1"
}

create() {
  [[ -z $type ]] && { echo "tpu_pod.sh: create needs --type (e.g. v5p-128)" >&2; exit 2; }
  run gcloud compute tpus tpu-vm create "$name" --zone="$zone" $project_flag \
    --accelerator-type="$type" --version="$version" $spot
}
install() {
  [[ -z $repo ]] && { echo "tpu_pod.sh: install needs --repo (a git URL every worker can clone)" >&2; exit 2; }
  ssh_all "set -e; sudo apt-get -qq update && sudo apt-get -qq install -y python3.11-venv git; \
rm -rf vla_jax && git clone -q $repo vla_jax && python3.11 -m venv vla_jax/.venv && \
vla_jax/.venv/bin/pip install -q -e 'vla_jax' 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
}
run_command() {
  [[ $# -eq 0 ]] && { echo "tpu_pod.sh: run needs a command after --" >&2; exit 2; }
  local quoted
  quoted=$(printf '%q ' "$@")
  ssh_all "cd vla_jax && PATH=\$PWD/.venv/bin:\$PATH ${quoted}"
}
delete() {
  run gcloud compute tpus tpu-vm delete "$name" --zone="$zone" $project_flag --quiet
}

case "$action" in
  create) create ;;
  install) install ;;
  run) run_command "$@" ;;
  delete) delete ;;
  all) create; install; run_command "$@"; delete ;;
  *) echo "tpu_pod.sh: unknown action $action" >&2; exit 2 ;;
esac
