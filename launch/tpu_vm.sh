#!/usr/bin/env bash
# Cloud TPU VM launcher for midibert-jax: create a TPU VM (or a queued resource), install the
# project on every worker, start the same training command on all workers, follow the logs,
# stop the run and delete the TPU. Run with -h for the options; --dry-run prints every command
# (one per line, shell-quoted, prefixed with "+ ") and runs nothing.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

PROG=${0##*/}

usage() {
  cat <<EOF
Usage: $PROG [OPTIONS] COMMAND [-- CONFIG_OVERRIDES...]

Commands:
  create   create the TPU VM (or queued resource) unless it exists; waits until it is ready
  setup    copy the repository to every worker, create a venv, pip install -e . "jax[tpu]"
  run      start 'midibert-jax TASK' on every worker (nohup, detached), logs to a file per worker
  logs     follow the log of one worker (default worker 0)
  stop     send SIGTERM to the run on every worker (it saves a checkpoint), SIGKILL after --grace
  delete   delete the TPU VM (or the queued resource and its TPU)
  all      create + setup + run

Options (environment variable giving the default in brackets):
  --project ID          Google Cloud project [TPU_PROJECT, else CLOUDSDK_CORE_PROJECT] (required)
  --zone ZONE           zone, e.g. us-west4-a [TPU_ZONE, else CLOUDSDK_COMPUTE_ZONE] (required)
  --accelerator TYPE    accelerator type as gcloud spells it: v4-8 ... v4-4096, v5litepod-1 ... v5litepod-256,
                        v5p-8 ..., v6e-1 ... v6e-256, v2-8 ..., v3-8 ... [TPU_ACCELERATOR] (default: v5litepod-16)
  --name NAME           TPU (and queued resource) name [TPU_NAME] (default: midibert-<accelerator>)
  --version VERSION     TPU software version [TPU_VERSION] (default: chosen from the accelerator:
                        v4 and older tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                        v6e v2-alpha-tpuv6e)
  --queued              request the TPU through a queued resource instead of tpu-vm create [TPU_QUEUED=1]
  --spot | --reserved   Spot capacity, or capacity from a reservation [TPU_SPOT=1, TPU_RESERVED=1]
  --internal-ip         ssh/scp to the workers' internal IPs (no external IP) [TPU_INTERNAL_IP=1]
  --task TASK           pretrain or finetune [MIDIBERT_TASK] (default: pretrain)
  --config SPEC         config file and variant [MIDIBERT_CONFIG] (default: configs/pretrain.py:base;
                        required for finetune)
  --workdir URL         run directory, a gs:// URL on a multi-host slice [MIDIBERT_WORKDIR] (required by run/all)
  --env KEY=VALUE       extra environment variable for the training processes (repeatable)
  --repo-url URL        setup clones this git URL on the workers [MIDIBERT_REPO_URL]
                        (default: copy 'git archive' of this checkout's --ref)
  --ref REF             git ref to archive or check out [MIDIBERT_REF] (default: HEAD)
  --python PYTHON       Python on the workers, installed with apt if missing [MIDIBERT_PYTHON] (default: python3.11)
  --worker N            worker whose log 'logs' follows (default: 0)
  --grace SECONDS       how long 'stop' waits after SIGTERM before SIGKILL (default: 300)
  --dry-run             print the commands instead of running them
  -h, --help            this help

Everything after '--' is passed to 'midibert-jax TASK' verbatim (e.g. --config.train.steps=1000).

Examples:
  $PROG --project my-proj --zone us-west4-a --accelerator v5litepod-16 \\
      --workdir gs://my-bucket/runs/base all -- --config.train.steps=100000
  $PROG --project my-proj --zone us-west4-a --accelerator v5litepod-16 logs
  $PROG --project my-proj --zone us-west4-a --accelerator v5litepod-16 delete
EOF
}

# die, note, shquote, shjoin, optval.
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Print a command ("+ " and the quoted words): on stdout in a dry run, else on stderr before running it.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(shjoin "$@")"
  else
    printf '+ %s\n' "$(shjoin "$@")" >&2
    "$@"
  fi
}

# ---------------------------------------------------------------- options
PROJECT=${TPU_PROJECT:-${CLOUDSDK_CORE_PROJECT:-}}
ZONE=${TPU_ZONE:-${CLOUDSDK_COMPUTE_ZONE:-}}
ACCELERATOR=${TPU_ACCELERATOR:-v5litepod-16}
NAME=${TPU_NAME:-}
VERSION=${TPU_VERSION:-}
QUEUED=${TPU_QUEUED:-0}
SPOT=${TPU_SPOT:-0}
RESERVED=${TPU_RESERVED:-0}
INTERNAL_IP=${TPU_INTERNAL_IP:-0}
TASK=${MIDIBERT_TASK:-pretrain}
CONFIG=${MIDIBERT_CONFIG:-}
WORKDIR=${MIDIBERT_WORKDIR:-}
REPO_URL=${MIDIBERT_REPO_URL:-}
REF=${MIDIBERT_REF:-HEAD}
PYTHON=${MIDIBERT_PYTHON:-python3.11}
LOG_WORKER=0
GRACE=300
DRY_RUN=0
COMMAND=""
EXTRA_ENV=()
OVERRIDES=()

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --reserved) RESERVED=1; shift ;;
    --internal-ip) INTERNAL_IP=1; shift ;;
    --project | --project=*) optval --project "$@"; PROJECT=$OPTVAL; shift "$OPTSHIFT" ;;
    --zone | --zone=*) optval --zone "$@"; ZONE=$OPTVAL; shift "$OPTSHIFT" ;;
    --accelerator | --accelerator=*) optval --accelerator "$@"; ACCELERATOR=$OPTVAL; shift "$OPTSHIFT" ;;
    --name | --name=*) optval --name "$@"; NAME=$OPTVAL; shift "$OPTSHIFT" ;;
    --version | --version=*) optval --version "$@"; VERSION=$OPTVAL; shift "$OPTSHIFT" ;;
    --task | --task=*) optval --task "$@"; TASK=$OPTVAL; shift "$OPTSHIFT" ;;
    --config | --config=*) optval --config "$@"; CONFIG=$OPTVAL; shift "$OPTSHIFT" ;;
    --workdir | --workdir=*) optval --workdir "$@"; WORKDIR=$OPTVAL; shift "$OPTSHIFT" ;;
    --env | --env=*) optval --env "$@"; EXTRA_ENV+=("$OPTVAL"); shift "$OPTSHIFT" ;;
    --repo-url | --repo-url=*) optval --repo-url "$@"; REPO_URL=$OPTVAL; shift "$OPTSHIFT" ;;
    --ref | --ref=*) optval --ref "$@"; REF=$OPTVAL; shift "$OPTSHIFT" ;;
    --python | --python=*) optval --python "$@"; PYTHON=$OPTVAL; shift "$OPTSHIFT" ;;
    --worker | --worker=*) optval --worker "$@"; LOG_WORKER=$OPTVAL; shift "$OPTSHIFT" ;;
    --grace | --grace=*) optval --grace "$@"; GRACE=$OPTVAL; shift "$OPTSHIFT" ;;
    --) shift; OVERRIDES=("$@"); break ;;
    -*) die "unknown option: $1" ;;
    *)
      [[ -z $COMMAND ]] || die "more than one command: '$COMMAND' and '$1' (overrides go after '--')"
      COMMAND=$1
      shift
      ;;
  esac
done

# ---------------------------------------------------------------- validation
case $COMMAND in
  create | setup | run | logs | stop | delete | all) ;;
  "") die "no command given (one of create, setup, run, logs, stop, delete, all)" ;;
  *) die "unknown command '$COMMAND' (one of create, setup, run, logs, stop, delete, all)" ;;
esac

[[ -n $PROJECT ]] || die "--project is required (or set TPU_PROJECT)"
[[ -n $ZONE ]] || die "--zone is required (or set TPU_ZONE)"

# Accelerator type -> generation, size and TPU software version.
if [[ ! $ACCELERATOR =~ ^(v[0-9a-z]+)-([0-9]+)$ ]]; then
  die "accelerator '$ACCELERATOR' is not of the form GENERATION-SIZE (e.g. v4-8, v5litepod-16, v6e-8)"
fi
GENERATION=${BASH_REMATCH[1]}
SIZE=${BASH_REMATCH[2]}
case $GENERATION in
  v2 | v3 | v4) DEFAULT_VERSION=tpu-ubuntu2204-base; SIZES="a multiple of 8 (TensorCores)" ;;
  v5p) DEFAULT_VERSION=v2-alpha-tpuv5; SIZES="a multiple of 8 (TensorCores)" ;;
  v5litepod) DEFAULT_VERSION=v2-alpha-tpuv5-lite; SIZES="1, 4, 8, 16, 32, 64, 128 or 256 (chips)" ;;
  v6e) DEFAULT_VERSION=v2-alpha-tpuv6e; SIZES="1, 4, 8, 16, 32, 64, 128 or 256 (chips)" ;;
  v5e | v5lite) die "unknown accelerator '$ACCELERATOR': gcloud calls TPU v5e 'v5litepod' (e.g. v5litepod-$SIZE)" ;;
  *) die "unknown TPU generation '$GENERATION' in '$ACCELERATOR' (known: v2, v3, v4, v5p, v5litepod, v6e)" ;;
esac
case $GENERATION in
  v5litepod | v6e)
    case $SIZE in
      1 | 4 | 8 | 16 | 32 | 64 | 128 | 256) ;;
      *) die "no accelerator type '$ACCELERATOR': the size of a $GENERATION slice is $SIZES" ;;
    esac
    ;;
  *)
    ((SIZE > 0 && SIZE % 8 == 0)) || die "no accelerator type '$ACCELERATOR': the size of a $GENERATION slice is $SIZES"
    ;;
esac
VERSION=${VERSION:-$DEFAULT_VERSION}
MULTI_HOST=0
if ((SIZE > 8)); then MULTI_HOST=1; fi # every generation has at most 8 cores/chips on one host

NAME=${NAME:-midibert-$ACCELERATOR}
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "bad TPU name '$NAME': lowercase letters, digits and hyphens, starting with a letter"

if [[ $SPOT == 1 && $RESERVED == 1 ]]; then die "--spot and --reserved exclude each other"; fi

case $TASK in
  pretrain) CONFIG=${CONFIG:-configs/pretrain.py:base} ;;
  finetune) [[ -n $CONFIG ]] || die "--config is required for finetune (e.g. configs/finetune.py:<variant>)" ;;
  *) die "unknown task '$TASK' (pretrain or finetune)" ;;
esac

if [[ $COMMAND == run || $COMMAND == all ]]; then
  [[ -n $WORKDIR ]] || die "--workdir is required for '$COMMAND' (or set MIDIBERT_WORKDIR), e.g. gs://my-bucket/runs/base"
  if [[ $MULTI_HOST == 1 && $WORKDIR != gs://* ]]; then
    die "--workdir must be a gs:// URL on a multi-host slice ($ACCELERATOR): each worker has its own disk"
  fi
fi
for kv in ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}; do
  [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got '$kv'"
done
[[ $LOG_WORKER =~ ^[0-9]+$ ]] || die "--worker wants a worker number, got '$LOG_WORKER'"
[[ $GRACE =~ ^[0-9]+$ ]] || die "--grace wants seconds, got '$GRACE'"

# ---------------------------------------------------------------- gcloud helpers
LOCATION=(--zone="$ZONE" --project="$PROJECT")
SSH_FLAGS=()
if [[ $INTERNAL_IP == 1 ]]; then SSH_FLAGS=(--internal-ip); fi

# Remote layout, in the home directory of the ssh user on every worker ($HOME expands there).
# shellcheck disable=SC2016
R_SRC='"$HOME"/midibert-jax' R_VENV='"$HOME"/midibert-venv' R_LOGS='"$HOME"/midibert-logs'

ssh_workers() { # WORKER COMMAND_STRING
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$1" \
    ${SSH_FLAGS[@]+"${SSH_FLAGS[@]}"} --command="$2"
}

# Joins the statements of a remote script into one line.
statements() {
  local out="" s
  for s in "$@"; do
    out+="${out:+; }$s"
  done
  printf '%s' "$out"
}

# Waits until a queued resource is ACTIVE (one describe in a dry run).
wait_queued_active() {
  local describe=(gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" --format='value(state.state)')
  if [[ $DRY_RUN == 1 ]]; then
    run "${describe[@]}"
    return
  fi
  local state
  while true; do
    state=$("${describe[@]}")
    case $state in
      ACTIVE) note "queued resource $NAME is ACTIVE"; return ;;
      FAILED | SUSPENDED | SUSPENDING | DELETING)
        die "queued resource $NAME is $state; see: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE --project=$PROJECT" ;;
      *) note "queued resource $NAME is ${state:-not visible yet}; checking again in 60 s (Ctrl-C is safe: the request stays queued)"; sleep 60 ;;
    esac
  done
}

cmd_create() {
  local state create
  if [[ $QUEUED == 1 ]]; then
    create=(gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME"
      --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION" "${LOCATION[@]}")
  else
    create=(gcloud compute tpus tpu-vm create "$NAME"
      --accelerator-type="$ACCELERATOR" --version="$VERSION" "${LOCATION[@]}")
  fi
  if [[ $SPOT == 1 ]]; then create+=(--spot); fi
  if [[ $RESERVED == 1 ]]; then create+=(--reserved); fi

  if [[ $QUEUED == 1 ]]; then
    state=""
    if [[ $DRY_RUN == 1 ]]; then
      run gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" --format='value(state.state)'
    else
      state=$(gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" --format='value(state.state)' 2>/dev/null || true)
    fi
    if [[ -n $state ]]; then
      note "queued resource $NAME exists ($state): reusing it"
    else
      run "${create[@]}"
    fi
    wait_queued_active
    return
  fi

  state=""
  if [[ $DRY_RUN == 1 ]]; then
    run gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" --format='value(state)'
  else
    state=$(gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" --format='value(state)' 2>/dev/null || true)
  fi
  case $state in
    "") run "${create[@]}" ;;
    READY) note "TPU VM $NAME exists and is READY: reusing it" ;;
    STOPPED) note "TPU VM $NAME is STOPPED: starting it"; run gcloud compute tpus tpu-vm start "$NAME" "${LOCATION[@]}" ;;
    *) die "TPU VM $NAME exists in state $state; wait, or '$PROG ... delete' it and create it again" ;;
  esac
}

cmd_setup() {
  local fetch stage="" tarball
  # Refuse to replace the code under a running job.
  local guard="if [ -f $R_LOGS/train.pid ] && kill -0 \"\$(cat $R_LOGS/train.pid)\" 2>/dev/null; then echo \"\$(hostname): a run is in progress; stop it first\" >&2; exit 1; fi"
  if [[ -n $REPO_URL ]]; then
    fetch=$(statements \
      "rm -rf $R_SRC" \
      "git clone -q $(shquote "$REPO_URL") $R_SRC" \
      "git -C $R_SRC checkout -q $(shquote "$REF")")
  else
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [[ $DRY_RUN == 1 ]]; then
      stage="${TMPDIR:-/tmp}/midibert-jax.XXXXXX"
    else
      git -C "$repo" rev-parse --verify -q "$REF^{commit}" >/dev/null || die "'$REF' is not a commit of $repo"
      if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
        note "warning: uncommitted changes in $repo are not copied (git archive of $REF)"
      fi
      stage=$(mktemp -d "${TMPDIR:-/tmp}/midibert-jax.XXXXXX")
      # shellcheck disable=SC2064  # expand $stage now
      trap "rm -rf '$stage'" EXIT
    fi
    tarball=$stage/midibert-jax.tar.gz
    run git -C "$repo" archive --format=tar.gz --prefix=midibert-jax/ -o "$tarball" "$REF"
    run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:midibert-jax.tar.gz" "${LOCATION[@]}" --worker=all \
      ${SSH_FLAGS[@]+"${SSH_FLAGS[@]}"}
    fetch=$(statements \
      "rm -rf $R_SRC" \
      "tar -xzf \"\$HOME\"/midibert-jax.tar.gz -C \"\$HOME\"" \
      "rm -f \"\$HOME\"/midibert-jax.tar.gz")
  fi
  local py
  py=$(shquote "$PYTHON")
  local script
  script=$(statements \
    "set -euo pipefail" \
    "$guard" \
    "if ! command -v $py >/dev/null; then sudo apt-get -o DPkg::Lock::Timeout=600 update -q && sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q $py $(shquote "$PYTHON-venv"); fi" \
    "$fetch" \
    "$py -m venv $R_VENV" \
    "$R_VENV/bin/pip install -q -U pip" \
    "$R_VENV/bin/pip install -q -e $R_SRC 'jax[tpu]'" \
    "$R_VENV/bin/python -c 'import jax, midibert_jax; print(\"jax\", jax.__version__)'" \
    "echo \"\$(hostname): setup done\"")
  ssh_workers all "$script"
}

cmd_run() {
  # Every TPU worker joins the slice through jax.distributed (peers are auto-detected).
  local env_words=" MIDIBERT_DISTRIBUTED=auto" kv
  for kv in ${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}; do
    env_words+=" $(shquote "$kv")"
  done
  local train
  train="$R_VENV/bin/midibert-jax $(shjoin "$TASK" --config "$CONFIG" --workdir "$WORKDIR" ${OVERRIDES[@]+"${OVERRIDES[@]}"})"
  train="env$env_words $train"
  local script
  script=$(statements \
    "set -euo pipefail" \
    "mkdir -p $R_LOGS" \
    "if [ -f $R_LOGS/train.pid ] && kill -0 \"\$(cat $R_LOGS/train.pid)\" 2>/dev/null; then echo \"\$(hostname): already running (pid \$(cat $R_LOGS/train.pid)); stop it first\" >&2; exit 1; fi" \
    "cd $R_SRC" \
    "echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) \$(hostname): start ===\" >> $R_LOGS/train.log" \
    "setsid nohup $train >> $R_LOGS/train.log 2>&1 < /dev/null & echo \$! > $R_LOGS/train.pid" \
    "echo \"\$(hostname): started pid \$(cat $R_LOGS/train.pid), log $R_LOGS/train.log\"")
  ssh_workers all "$script"
  [[ $DRY_RUN == 1 ]] || note "started on every worker of $NAME; follow with: $PROG --project $PROJECT --zone $ZONE --name $NAME --accelerator $ACCELERATOR logs"
}

cmd_logs() {
  ssh_workers "$LOG_WORKER" "tail -n 200 -F $R_LOGS/train.log"
}

cmd_stop() {
  local script
  script=$(statements \
    "p=$R_LOGS/train.pid" \
    "if [ -f \"\$p\" ] && kill -0 \"\$(cat \"\$p\")\" 2>/dev/null; then pid=\$(cat \"\$p\"); kill -TERM -- -\"\$pid\" 2>/dev/null || kill -TERM \"\$pid\"; i=0; while kill -0 \"\$pid\" 2>/dev/null && [ \$i -lt $GRACE ]; do sleep 1; i=\$((i + 1)); done; if kill -0 \"\$pid\" 2>/dev/null; then kill -KILL -- -\"\$pid\" 2>/dev/null || kill -KILL \"\$pid\"; echo \"\$(hostname): killed after $GRACE s\"; else echo \"\$(hostname): stopped\"; fi; else echo \"\$(hostname): not running\"; fi" \
    "rm -f \"\$p\"")
  ssh_workers all "$script"
}

cmd_delete() {
  if [[ $QUEUED == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
  fi
}

case $COMMAND in
  create) cmd_create ;;
  setup) cmd_setup ;;
  run) cmd_run ;;
  logs) cmd_logs ;;
  stop) cmd_stop ;;
  delete) cmd_delete ;;
  all) cmd_create; cmd_setup; cmd_run ;;
esac
