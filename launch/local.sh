#!/usr/bin/env bash
# Runs midibert-jax on this machine: one process on all local devices, a simulated mesh of N CPU
# devices (--devices N), or P local processes joined through jax.distributed (--processes P), the
# multi-host code path without a cluster. Run with -h for the options; --dry-run prints the
# commands (one per line, shell-quoted, prefixed with "+ ") and runs nothing.
# Uses no bash-4-only features, so the bash 3.2 of macOS can run it.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

PROG=${0##*/}

usage() {
  cat <<EOF
Usage: $PROG [OPTIONS] [-- CONFIG_OVERRIDES...]

Options (environment variable giving the default in brackets):
  --task TASK             pretrain or finetune [MIDIBERT_TASK] (default: pretrain)
  --config SPEC           config file and variant [MIDIBERT_CONFIG] (default: configs/pretrain.py:base;
                          required for finetune)
  --workdir DIR           run directory [MIDIBERT_WORKDIR] (required)
  --devices N             simulate N devices on the CPU in every process
                          (XLA_FLAGS=--xla_force_host_platform_device_count=N, JAX_PLATFORMS=cpu)
  --processes P           start P processes on 127.0.0.1 (MIDIBERT_COORDINATOR / MIDIBERT_NUM_PROCESSES /
                          MIDIBERT_PROCESS_ID), wait for all; if one fails the others are stopped (default: 1)
  --port PORT             coordinator port [MIDIBERT_PORT] (default: a free port)
  --gpus-per-process K    with --processes: process i sees GPUs i*K .. i*K+K-1 (CUDA_VISIBLE_DEVICES)
  --log-dir DIR           with --processes: where processes 1..P-1 log, process 0 logs to this terminal
                          (default: WORKDIR/logs, or \${TMPDIR:-/tmp}/midibert-logs for a URL workdir)
  --dry-run               print the commands instead of running them
  -h, --help              this help

Everything after '--' is passed to 'midibert-jax TASK' verbatim. Run it from the repository root
(configs/ paths are relative). The program run is \$MIDIBERT_JAX if set, else 'midibert-jax'
from PATH, else REPO/.venv/bin/midibert-jax.

Examples:
  $PROG --workdir runs/tiny -- --config.train.steps=100
  $PROG --devices 8 --workdir runs/mesh8 --config configs/pretrain.py:tiny
  $PROG --processes 2 --devices 4 --workdir runs/mp --config configs/pretrain.py:tiny
EOF
}

# die, note, shquote, shjoin, optval.
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---------------------------------------------------------------- options
TASK=${MIDIBERT_TASK:-pretrain}
CONFIG=${MIDIBERT_CONFIG:-}
WORKDIR=${MIDIBERT_WORKDIR:-}
PORT=${MIDIBERT_PORT:-}
DEVICES=""
PROCESSES=1
GPUS_PER_PROCESS=""
LOG_DIR=""
DRY_RUN=0
OVERRIDES=()

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --task | --task=*) optval --task "$@"; TASK=$OPTVAL; shift "$OPTSHIFT" ;;
    --config | --config=*) optval --config "$@"; CONFIG=$OPTVAL; shift "$OPTSHIFT" ;;
    --workdir | --workdir=*) optval --workdir "$@"; WORKDIR=$OPTVAL; shift "$OPTSHIFT" ;;
    --devices | --devices=*) optval --devices "$@"; DEVICES=$OPTVAL; shift "$OPTSHIFT" ;;
    --processes | --processes=*) optval --processes "$@"; PROCESSES=$OPTVAL; shift "$OPTSHIFT" ;;
    --port | --port=*) optval --port "$@"; PORT=$OPTVAL; shift "$OPTSHIFT" ;;
    --gpus-per-process | --gpus-per-process=*) optval --gpus-per-process "$@"; GPUS_PER_PROCESS=$OPTVAL; shift "$OPTSHIFT" ;;
    --log-dir | --log-dir=*) optval --log-dir "$@"; LOG_DIR=$OPTVAL; shift "$OPTSHIFT" ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown argument: $1 (config overrides go after '--')" ;;
  esac
done

case $TASK in
  pretrain) CONFIG=${CONFIG:-configs/pretrain.py:base} ;;
  finetune) [[ -n $CONFIG ]] || die "--config is required for finetune (e.g. configs/finetune.py:<variant>)" ;;
  *) die "unknown task '$TASK' (pretrain or finetune)" ;;
esac
[[ -n $WORKDIR ]] || die "--workdir is required (or set MIDIBERT_WORKDIR), e.g. runs/local"
[[ -z $DEVICES || $DEVICES =~ ^[1-9][0-9]*$ ]] || die "--devices wants a positive number, got '$DEVICES'"
[[ $PROCESSES =~ ^[1-9][0-9]*$ ]] || die "--processes wants a positive number, got '$PROCESSES'"
[[ -z $GPUS_PER_PROCESS || $GPUS_PER_PROCESS =~ ^[1-9][0-9]*$ ]] ||
  die "--gpus-per-process wants a positive number, got '$GPUS_PER_PROCESS'"
[[ -z $PORT || $PORT =~ ^[1-9][0-9]*$ ]] || die "--port wants a port number, got '$PORT'"
if [[ -n $GPUS_PER_PROCESS && -n $DEVICES ]]; then
  die "--devices simulates CPU devices and --gpus-per-process splits GPUs: use one of them"
fi

# ---------------------------------------------------------------- the program and its environment
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n ${MIDIBERT_JAX:-} ]]; then
  PROGRAM=$MIDIBERT_JAX
elif command -v midibert-jax >/dev/null 2>&1; then
  PROGRAM=midibert-jax
elif [[ -x $REPO/.venv/bin/midibert-jax ]]; then
  PROGRAM=$REPO/.venv/bin/midibert-jax
elif [[ $DRY_RUN == 1 ]]; then
  PROGRAM=midibert-jax
else
  die "midibert-jax not found: pip install -e . (in a venv, e.g. $REPO/.venv) or set MIDIBERT_JAX"
fi
TRAIN=("$PROGRAM" "$TASK" --config "$CONFIG" --workdir "$WORKDIR" ${OVERRIDES[@]+"${OVERRIDES[@]}"})

COMMON_ENV=()
if [[ -n $DEVICES ]]; then
  COMMON_ENV+=("JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}"
    "XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES${XLA_FLAGS:+ $XLA_FLAGS}")
fi

# Prints "+ ENV... COMMAND..." (stdout in a dry run, stderr otherwise).
show() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(shjoin "$@")"
  else
    printf '+ %s\n' "$(shjoin "$@")" >&2
  fi
}

# ---------------------------------------------------------------- one process
if [[ $PROCESSES == 1 ]]; then
  show ${COMMON_ENV[@]+"${COMMON_ENV[@]}"} "${TRAIN[@]}"
  [[ $DRY_RUN == 1 ]] && exit 0
  exec env ${COMMON_ENV[@]+"${COMMON_ENV[@]}"} "${TRAIN[@]}"
fi

# ---------------------------------------------------------------- P processes
if [[ -z $PORT ]]; then
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((RANDOM % 16384 + 49152)))
fi
COORDINATOR=127.0.0.1:$PORT
if [[ -z $LOG_DIR ]]; then
  case $WORKDIR in
    *://*) LOG_DIR=${TMPDIR:-/tmp}/midibert-logs ;;
    *) LOG_DIR=$WORKDIR/logs ;;
  esac
fi

process_env() { # ID -> the environment of process ID, one KEY=VALUE a line
  local i=$1 first gpus="" g
  printf '%s\n' "MIDIBERT_COORDINATOR=$COORDINATOR" "MIDIBERT_NUM_PROCESSES=$PROCESSES" "MIDIBERT_PROCESS_ID=$i"
  if [[ -n $GPUS_PER_PROCESS ]]; then
    first=$((i * GPUS_PER_PROCESS))
    for ((g = first; g < first + GPUS_PER_PROCESS; g++)); do gpus+="${gpus:+,}$g"; done
    printf '%s\n' "CUDA_VISIBLE_DEVICES=$gpus"
  fi
}

PIDS=()
LOGS=()

stop_all() { # SIGNAL: signal every process still running
  local pid
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    if [[ -n $pid ]]; then kill "-$1" "$pid" 2>/dev/null || true; fi
  done
}

on_signal() {
  trap - INT TERM
  note "interrupted: stopping all processes"
  stop_all TERM
  wait || true
  exit 130
}

if [[ $DRY_RUN == 0 ]]; then
  mkdir -p "$LOG_DIR"
  trap on_signal INT TERM
fi
for ((i = 0; i < PROCESSES; i++)); do
  ENV=()
  while IFS= read -r kv; do ENV+=("$kv"); done < <(process_env "$i")
  ENV+=(${COMMON_ENV[@]+"${COMMON_ENV[@]}"})
  show "${ENV[@]}" "${TRAIN[@]}"
  [[ $DRY_RUN == 1 ]] && continue
  if ((i == 0)); then
    LOGS+=("")
    env "${ENV[@]}" "${TRAIN[@]}" &
  else
    LOGS+=("$LOG_DIR/process-$i.log")
    env "${ENV[@]}" "${TRAIN[@]}" >"$LOG_DIR/process-$i.log" 2>&1 </dev/null &
  fi
  PIDS+=($!)
done
if [[ $DRY_RUN == 1 ]]; then
  note "processes 1..$((PROCESSES - 1)) would log to $LOG_DIR/process-<id>.log"
  exit 0
fi
note "$PROCESSES processes, coordinator $COORDINATOR; processes 1..$((PROCESSES - 1)) log to $LOG_DIR/process-<id>.log"

# Wait for every process; on the first failure stop the others (they would wait for the dead peer).
RUNNING=$PROCESSES
FAILED_STATUS=0
FAILED_ID=""
KILL_AT=""
while ((RUNNING > 0)); do
  for ((i = 0; i < PROCESSES; i++)); do
    pid=${PIDS[i]}
    [[ -n $pid ]] || continue
    kill -0 "$pid" 2>/dev/null && continue
    status=0
    wait "$pid" || status=$?
    PIDS[i]=""
    RUNNING=$((RUNNING - 1))
    if ((status != 0)) && [[ -z $FAILED_ID ]]; then
      FAILED_ID=$i
      FAILED_STATUS=$status
      note "process $i exited with status $status; stopping the others"
      if [[ -n ${LOGS[i]} ]]; then
        note "last lines of ${LOGS[i]}:"
        tail -n 20 "${LOGS[i]}" >&2 || true
      fi
      stop_all TERM
      KILL_AT=$((SECONDS + 30))
    fi
  done
  if ((RUNNING > 0)); then
    if [[ -n $KILL_AT ]] && ((SECONDS >= KILL_AT)); then
      note "processes still running 30 s after SIGTERM: sending SIGKILL"
      stop_all KILL
      KILL_AT=""
    fi
    sleep 0.5
  fi
done

if [[ -n $FAILED_ID ]]; then
  note "failed: process $FAILED_ID exited with status $FAILED_STATUS"
  exit "$FAILED_STATUS"
fi
note "all $PROCESSES processes finished"
