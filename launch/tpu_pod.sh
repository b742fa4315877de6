#!/usr/bin/env bash
# Cloud TPU slices, single-host (v5p-8) or multi-host pod slices (v5p-64, v6e-64, ...): create
# the slice, install this repository on every worker, run the same r1jax-train command line on
# all workers at once (JAX finds the slice's other hosts by itself), relaunch after preemption.
#
#   launch/tpu_pod.sh [OPTIONS] create
#   launch/tpu_pod.sh [OPTIONS] install
#   launch/tpu_pod.sh [OPTIONS] train CONFIG[:ARG] [--config.KEY=VALUE ...]
#   launch/tpu_pod.sh [OPTIONS] logs
#   launch/tpu_pod.sh [OPTIONS] stop
#   launch/tpu_pod.sh [OPTIONS] ssh -- COMMAND ...
#   launch/tpu_pod.sh [OPTIONS] delete
#
# `train` keeps the run going: when the slice is preempted (spot), suspended or gone, it
# re-creates it, installs again (running --setup too) and reruns the same command, which
# resumes from the checkpoints in train.run_dir (a gs:// path or a file system every worker
# mounts). See launch/README.md; `--dry-run` (or DRY_RUN=1) prints every command, one a
# line, and runs none.
set -euo pipefail

usage() {
  cat >&2 <<EOF
usage: $0 [OPTIONS] SUBCOMMAND
  create | install | train CONFIG [--config.KEY=VALUE ...] | logs | stop | ssh -- CMD | delete

options (or the environment variable after each):
  --name=NAME              TPU_NAME              TPU and queued-resource name (required)
  --zone=ZONE              TPU_ZONE              e.g. us-east5-a (required)
  --project=PROJECT        TPU_PROJECT           default: gcloud's configured project
  --accelerator-type=TYPE  TPU_ACCELERATOR_TYPE  default v5p-8 (v5p-64, v6e-64, v5litepod-16)
  --runtime-version=V      TPU_RUNTIME_VERSION   default: the generation's base image
  --queued                 TPU_QUEUED=1          create through a queued resource
  --spot                   TPU_SPOT=1            spot capacity (preemptible)
  --best-effort            TPU_BEST_EFFORT=1     best-effort queued resource (gcloud alpha)
  --cli=PROGRAM            TPU_CLI               r1jax-train (default) or r1jax-sft
  --dir=DIR                TPU_DIR               checkout on the workers, from \$HOME (r1jax)
  --git=URL                TPU_GIT               install clones URL instead of copying here
  --ref=REF                TPU_REF               what --git checks out (origin/HEAD)
  --setup=COMMAND          TPU_SETUP             install then runs it on every worker
  --python=PYTHON          TPU_PYTHON            Python >= 3.11 there (python3; else uv's)
  --env=KEY=VALUE                                for the trainer on every worker (repeatable)
  --worker=N               TPU_WORKER            logs / stop / ssh: which (0 / all / all)
  --max-restarts=N         TPU_MAX_RESTARTS      train: relaunches allowed (100)
  --retry-failures         TPU_RETRY_FAILURES=1  train: relaunch after failures on a healthy slice
  --dry-run                DRY_RUN=1             print the commands, run nothing
EOF
  exit 2
}

die() { echo "$0: $*" >&2; exit 1; }
note() { echo "[tpu_pod] $*" >&2; }

name=${TPU_NAME:-} zone=${TPU_ZONE:-} project=${TPU_PROJECT:-}
accelerator=${TPU_ACCELERATOR_TYPE:-v5p-8} version=${TPU_RUNTIME_VERSION:-}
queued=${TPU_QUEUED:-0} spot=${TPU_SPOT:-0} best_effort=${TPU_BEST_EFFORT:-0}
cli=${TPU_CLI:-r1jax-train} dir=${TPU_DIR:-r1jax} git_url=${TPU_GIT:-} ref=${TPU_REF:-origin/HEAD}
setup=${TPU_SETUP:-} python=${TPU_PYTHON:-python3} worker=${TPU_WORKER:-}
max_restarts=${TPU_MAX_RESTARTS:-100}
retry_failures=${TPU_RETRY_FAILURES:-0} dry_run=${DRY_RUN:-0}
envs=() subcommand='' config='' rest=()
repo=$(cd "$(dirname "$0")/.." && pwd)

while [ $# -gt 0 ]; do
  arg=$1
  case $arg in
    --name=*) name=${arg#*=} ;;
    --zone=*) zone=${arg#*=} ;;
    --project=*) project=${arg#*=} ;;
    --accelerator-type=*) accelerator=${arg#*=} ;;
    --runtime-version=*) version=${arg#*=} ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --best-effort) best_effort=1 ;;
    --cli=*) cli=${arg#*=} ;;
    --dir=*) dir=${arg#*=} ;;
    --git=*) git_url=${arg#*=} ;;
    --ref=*) ref=${arg#*=} ;;
    --setup=*) setup=${arg#*=} ;;
    --python=*) python=${arg#*=} ;;
    --env=*=*) envs+=("${arg#--env=}") ;;
    --worker=*) worker=${arg#*=} ;;
    --max-restarts=*) max_restarts=${arg#*=} ;;
    --retry-failures) retry_failures=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage ;;
    --) shift; rest+=("$@"); break ;;
    -*)
      # After train's CONFIG every argument is the trainer's, passed through untouched.
      if [ "$subcommand" = train ] && [ -n "$config" ]; then rest+=("$@"); break; fi
      echo "$0: unknown option $arg" >&2; usage ;;
    *)
      if [ -z "$subcommand" ]; then subcommand=$arg
      elif [ "$subcommand" = train ] && [ -z "$config" ]; then config=$arg
      else rest+=("$arg"); fi ;;
  esac
  shift
done

case $subcommand in
  create|install|logs|stop|delete) [ ${#rest[@]} -eq 0 ] || usage ;;
  train) [ -n "$config" ] || { echo "$0: train needs a CONFIG file" >&2; usage; } ;;
  ssh) [ ${#rest[@]} -gt 0 ] || { echo "$0: ssh needs a command" >&2; usage; } ;;
  '') echo "$0: missing subcommand" >&2; usage ;;
  *) echo "$0: unknown subcommand $subcommand" >&2; usage ;;
esac
[ -n "$name" ] || { echo "$0: --name (or TPU_NAME) is required" >&2; usage; }
[ -n "$zone" ] || { echo "$0: --zone (or TPU_ZONE) is required" >&2; usage; }
[[ $max_restarts =~ ^[0-9]+$ ]] || { echo "$0: --max-restarts takes a number" >&2; usage; }
[ "$best_effort" = 1 ] && queued=1

if [ -z "$version" ]; then
  # The base images the TPU documentation names for JAX, one for each generation.
  case $accelerator in
    v6e-*) version=v2-alpha-tpuv6e ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    v4-*) version=tpu-ubuntu2204-base ;;
    *) die "no default runtime version for $accelerator: pass --runtime-version" ;;
  esac
fi

# Printed commands go to the original stdout (fd 3), also from inside $(...).
exec 3>&1
dry() { [ "$dry_run" = 1 ]; }
show() { local line; printf -v line '%q ' "$@"; echo "${line% }" >&3; }
run() {
  if dry; then show "$@"; else echo "+ $*" >&2; "$@"; fi
}

scope=(--zone="$zone")
[ -n "$project" ] && scope+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)
qr=(gcloud compute tpus queued-resources)
# --best-effort exists only in gcloud's alpha track.
[ "$best_effort" = 1 ] && qr=(gcloud alpha compute tpus queued-resources)

# The slice's state: READY / ACTIVE when usable, "" when it does not exist. A dry run prints
# the query and assumes the state in $dry_state (default: no slice yet).
dry_state=${DRY_RUN_STATE:-}
slice_state() {
  if dry; then
    if [ "$queued" = 1 ]; then
      show "${qr[@]}" describe "$name" "${scope[@]}" --format='value(state.state)'
    else
      show "${tpu[@]}" describe "$name" "${scope[@]}" --format='value(state)'
    fi
    echo "$dry_state"
  elif [ "$queued" = 1 ]; then
    "${qr[@]}" describe "$name" "${scope[@]}" --format='value(state.state)' 2>/dev/null || true
  else
    "${tpu[@]}" describe "$name" "${scope[@]}" --format='value(state)' 2>/dev/null || true
  fi
}

create_slice() {
  local capacity=()
  [ "$spot" = 1 ] && capacity+=(--spot)
  [ "$best_effort" = 1 ] && capacity+=(--best-effort)
  if [ "$queued" = 1 ]; then
    run "${qr[@]}" create "$name" --node-id="$name" "${scope[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" ${capacity[@]+"${capacity[@]}"}
  else
    run "${tpu[@]}" create "$name" "${scope[@]}" \
      --accelerator-type="$accelerator" --version="$version" ${capacity[@]+"${capacity[@]}"}
  fi
  dry_state=READY
}

delete_slice() {
  if [ "$queued" = 1 ]; then
    # --force deletes the TPU the queued resource holds along with it.
    run "${qr[@]}" delete "$name" "${scope[@]}" --force --quiet
  else
    run "${tpu[@]}" delete "$name" "${scope[@]}" --quiet
  fi
  dry_state=''
}

# Waits until the slice is usable, creating it (or replacing a preempted, suspended or failed
# one) as needed; sets fresh=1 when the workers are new and need `install`.
fresh=0
ensure_slice() {
  local state
  while :; do
    state=$(slice_state)
    case $state in
      READY|ACTIVE) return 0 ;;
      '') note "no slice $name: creating it"; create_slice; fresh=1 ;;
      PREEMPTED|TERMINATED|SUSPENDED|FAILED)
        note "slice $name is $state: deleting and re-creating it"; delete_slice ;;
      STOPPED) run "${tpu[@]}" start "$name" "${scope[@]}"; dry_state=READY ;;
      *) note "slice $name is $state: waiting"; sleep 30 ;;
    esac
  done
}

on_workers() {  # on_workers WORKER REMOTE_COMMAND
  run "${tpu[@]}" ssh "$name" "${scope[@]}" --worker="$1" --command="$2"
}

install() {
  local get venv steps d py
  d=$(printf %q "$dir") py=$(printf %q "$python")
  if [ -n "$git_url" ]; then
    get="if [ -d $d/.git ]; then git -C $d fetch -q origin; else git clone -q $(printf %q "$git_url") $d; fi"
    get+=" && git -C $d checkout -q $(printf %q "$ref")"
  else
    # This checkout's files (tracked and untracked, not the ignored .venv / runs / caches).
    local tarball=/tmp/r1jax-$name.tar.gz r
    r=$(printf %q "$repo")
    if dry; then
      echo "git -C $r ls-files -z -co --exclude-standard | tar -C $r --null -T - -czf $tarball" >&3
    else
      git -C "$repo" ls-files -z -co --exclude-standard | tar -C "$repo" --null -T - -czf "$tarball"
    fi
    run "${tpu[@]}" scp "$tarball" "$name:/tmp/r1jax.tar.gz" "${scope[@]}" --worker=all
    get="mkdir -p $d && tar -xzf /tmp/r1jax.tar.gz -C $d"
  fi
  # r1jax needs Python >= 3.11; an older system Python gets a 3.11 from uv.
  venv="if $py -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then $py -m venv .venv;"
  venv+=" else python3 -m pip install -q --user uv && ~/.local/bin/uv venv -q --seed --python 3.11 .venv; fi"
  steps="set -e; $get; cd $d; [ -x .venv/bin/python ] || { $venv; }; .venv/bin/pip install -q -U pip"
  steps+="; .venv/bin/pip install -q -c constraints.txt -e '.[tpu]'"
  # The setup command runs from the home directory, also on the new workers of a relaunch.
  [ -z "$setup" ] || steps+="; cd; $setup"
  on_workers all "$steps"
}

# The command every worker runs: the same CLI and arguments everywhere. Each worker logs to
# DIR/logs/worker<N>.log; worker 0's log is streamed back. A run still going from an earlier
# launch (a dropped connection) is stopped with SIGTERM first, which makes it checkpoint.
train_command() {
  local cmd=(.venv/bin/"$cli" --config="$config" ${rest[@]+"${rest[@]}"})
  [ ${#envs[@]} -gt 0 ] && cmd=(env ${envs[@]+"${envs[@]}"} "${cmd[@]}")
  local line; printf -v line '%q ' "${cmd[@]}"
  local meta=http://metadata.google.internal/computeMetadata/v1/instance/attributes
  local stop_old="if [ -n \"\$old\" ] && grep -qs r1jax /proc/\$old/cmdline; then"
  stop_old+=" echo \"stopping the earlier run (pid \$old) at a checkpoint\" >&2; kill -TERM \$old;"
  stop_old+=" for i in \$(seq 600); do grep -qs r1jax /proc/\$old/cmdline || break; sleep 1; done;"
  stop_old+=" kill -KILL \$old 2>/dev/null || true; fi"
  local steps=(
    "cd $(printf %q "$dir") || exit 3"
    "[ -x .venv/bin/$cli ] || { echo \"no .venv/bin/$cli on \$(hostname): run install\" >&2; exit 3; }"
    "mkdir -p logs"
    "w=\$(curl -sf -H Metadata-Flavor:Google $meta/agent-worker-number || echo 0)"
    "log=logs/worker\$w.log"
    "old=\$(cat logs/run.pid 2>/dev/null || true)"
    "$stop_old"
    # Worker 0 streams only this run's lines of its log.
    "touch \$log"
    "start=\$((\$(wc -l < \$log) + 1))"
    "${line% } >> \$log 2>&1 & pid=\$!"
    "echo \$pid > logs/run.pid"
    "if [ \"\$w\" = 0 ]; then tail -n +\$start --pid=\$pid -F \$log; fi"
    "wait \$pid"
  )
  local joined; printf -v joined '%s; ' "${steps[@]}"
  echo "${joined%; }"
}

train() {
  local restarts=0 rc state
  while :; do
    fresh=0
    ensure_slice
    [ "$fresh" = 1 ] && install
    rc=0
    on_workers all "$(train_command)" || rc=$?
    if [ "$rc" = 0 ]; then note "finished"; return 0; fi
    state=$(slice_state)
    case $state in
      READY|ACTIVE)
        # rc 255 is ssh's own failure (a dropped connection): the rerun stops the run left
        # behind at a checkpoint and resumes it.
        if [ "$rc" != 255 ] && [ "$retry_failures" != 1 ]; then
          die "the run failed (exit $rc) on a healthy slice; fix the cause, then rerun the" \
            "same command: it resumes from the last checkpoint"
        fi ;;
    esac
    restarts=$((restarts + 1))
    [ "$restarts" -le "$max_restarts" ] || die "gave up after $max_restarts relaunches (exit $rc)"
    note "exit $rc, slice state '${state}': relaunch $restarts of $max_restarts"
  done
}

case $subcommand in
  create) ensure_slice ;;
  install) install ;;
  train) train ;;
  logs)
    [[ ${worker:-0} =~ ^[0-9]+$ ]] || { echo "$0: logs takes one --worker=N" >&2; usage; }
    on_workers "${worker:-0}" "tail -n 200 -F $(printf %q "$dir")/logs/worker${worker:-0}.log" ;;
  stop)
    on_workers "${worker:-all}" "kill -TERM \$(cat $(printf %q "$dir")/logs/run.pid)" ;;
  ssh) on_workers "${worker:-all}" "${rest[*]}" ;;  # joined with spaces, as ssh(1) does
  delete) delete_slice ;;
esac
