#!/usr/bin/env bash
# Train on a single-host Cloud TPU VM (v4-8, v5p-8, v5e-8, v6e-8, ...): the same CLI a laptop
# runs, on the TPU chips of that VM.
#
#   launch/tpu_vm.sh TPU_NAME ZONE configs/dapo_qwen2_5_math_7b.py [--config.KEY=VALUE ...]
#
# The VM needs this repository at ~/r1jax, the model directory and the data on its disks (or
# a mounted bucket); nothing is downloaded at run time.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG [--config.KEY=VALUE ...]" >&2
  exit 2
fi
name=$1 zone=$2 config=$3
shift 3
overrides=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e
  cd ~/r1jax
  [ -d .venv ] || { python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[tpu]'; }
  .venv/bin/r1jax-train --config=$config$overrides
"
