# Shell helpers shared by launch/local.sh and launch/tpu_vm.sh (sourced; sets nothing but functions).
# launch/gpu_slurm.sbatch keeps its own copies: Slurm runs a copy of the batch script from its spool
# directory, where no file beside it can be sourced. Callers set PROG (their name) first.
# Uses no bash-4-only features, so the bash 3.2 of macOS can run it.
# shellcheck shell=bash

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf "Run '%s -h' for usage.\n" "$PROG" >&2
  exit 2
}

note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# Quote one word for a POSIX shell (like Python's shlex.quote).
shquote() {
  local s=$1 q="'\\''"
  if [[ -n $s && $s != *[![:alnum:]_@%+=:,./-]* ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

# Quote every argument and join them with spaces.
shjoin() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(shquote "$a")"
  done
  printf '%s' "$out"
}

# Option value of NAME from "--name=value" (OPTSHIFT=1) or "--name value" (OPTSHIFT=2), in OPTVAL.
# shellcheck disable=SC2034  # OPTVAL and OPTSHIFT are read by the sourcing script
optval() {
  local name=$1 arg=$2
  if [[ $arg == *=* ]]; then
    OPTVAL=${arg#*=}
    OPTSHIFT=1
  else
    [[ $# -ge 3 ]] || die "$name needs a value"
    OPTVAL=$3
    OPTSHIFT=2
  fi
}
