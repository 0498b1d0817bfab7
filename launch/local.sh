#!/usr/bin/env bash
# One machine. Trains with one process by default; NUM_PROCESSES > 1 starts
# that many processes that join through jax.distributed on this machine (a
# rehearsal of a multi-host run: same code path, loopback network).
#
#   launch/local.sh configs/digits.py runs/digits [--config.field=value ...]
#   NUM_PROCESSES=2 CPU_DEVICES=4 launch/local.sh configs/digits.py runs/digits2 --config.mesh='(-1, 2)'
#
# What to edit / set:
#   PYTHON         interpreter with requirements.txt installed (default: .venv/bin/python, else python3)
#   NUM_PROCESSES  processes on this machine (default 1: one process drives every local device)
#   PORT           coordinator port on 127.0.0.1 for NUM_PROCESSES > 1 (default 12355)
#   GPUS_PER_PROCESS  with NUM_PROCESSES > 1 on a GPU machine: process i sees GPUs
#                  [i*GPUS_PER_PROCESS, (i+1)*GPUS_PER_PROCESS) through CUDA_VISIBLE_DEVICES
#   CPU_DEVICES    without accelerators: forced CPU devices per process (XLA_FLAGS)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
PYTHON=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
NUM_PROCESSES=${NUM_PROCESSES:-1}
PORT=${PORT:-12355}
if [[ -n "${CPU_DEVICES:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
fi

if [[ $NUM_PROCESSES -eq 1 ]]; then
  exec "$PYTHON" -m alexnet_jax.main --config "$config" --workdir "$workdir" "$@"
fi

pids=()
# SIGTERM or SIGINT (Ctrl-C) here: every process saves the step it is at and
# exits with status 3 (alexnet_jax/train/preemption.py). Forwarded as SIGTERM, so a
# Ctrl-C that also reached the processes from the terminal counts once; a
# second Ctrl-C reaches them from the terminal and stops them at once.
signalled=0
forward() {
  signalled=1
  kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap forward TERM INT
trap 'kill -KILL "${pids[@]}" 2>/dev/null || true' EXIT
for ((i = 0; i < NUM_PROCESSES; i++)); do
  if [[ -n "${GPUS_PER_PROCESS:-}" ]]; then
    export CUDA_VISIBLE_DEVICES=$(seq -s, $((i * GPUS_PER_PROCESS)) $(((i + 1) * GPUS_PER_PROCESS - 1)))
  fi
  "$PYTHON" -m alexnet_jax.main --config "$config" --workdir "$workdir" \
    --coordinator_address="127.0.0.1:${PORT}" --num_processes="$NUM_PROCESSES" --process_id="$i" "$@" &
  pids+=($!)
done
# The first failure's status (3: stopped by a signal, checkpoint saved).
status=0
for ((left = NUM_PROCESSES; left > 0; left--)); do
  while true; do
    before=$signalled
    wait -n && rc=0 || rc=$?
    # The trap interrupted the wait (status > 128), no process ended: wait again.
    ((rc > 128 && signalled != before)) || break
  done
  if ((rc == 127)) && [[ -z "$(jobs -p)" ]]; then
    break # none left
  elif ((rc != 0 && status == 0)); then
    status=$rc
    # A failed process leaves the others waiting at a collective, even for a clean stop: end them.
    ((rc == 3)) || kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
done
trap - EXIT
exit $status
