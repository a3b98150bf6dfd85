# The body of every Slurm job script: executor/backends/slurm.py writes the #SBATCH lines and these settings
# above it (job_script): DOCKER JOB_DIR REF EXPECTED NAME OUT_DIR DEADLINE_NS OUT_CAP_KB OUT_CAP_MB
# POLL_S GPU_MODE NEED_GPUS INSPECT_FORMAT, and the arrays CREATE_ARGS and COMMAND.
# Checked by shellcheck in the tests (tests/unit/test_slurm_job.py).
# shellcheck shell=bash disable=SC2154
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=${HOME:-$(getent passwd "$(id -un)" | cut -d: -f6)}
NODE=${SLURMD_NODENAME:-$(hostname)}
GPUS=${SLURM_JOB_GPUS:-}
STATUS=$JOB_DIR/status.json
T_BEGIN=$(date +%s.%N)

jstr() {  # $1 as a JSON string (control characters dropped)
  local s
  s=$(printf '%s' "$1" | tr -d '\000-\037')
  s=${s//\\/\\\\}; s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
finish() {  # finish STATE [',"key":json' ...]: status.json, written atomically
  local state=$1; shift
  printf '{"state":%s,"node":%s,"gpus":%s,"slurm_job":%s,"t_begin":%s%s}\n' "$(jstr "$state")" "$(jstr "$NODE")" \
    "$(jstr "$GPUS")" "$(jstr "${SLURM_JOB_ID:-}")" "$T_BEGIN" "$(printf '%s' "$@")" > "$STATUS.tmp"
  mv -f "$STATUS.tmp" "$STATUS"
}
fail() {  # fail REASON: nothing (more) runs
  "$DOCKER" rm -f "$NAME" >/dev/null 2>&1
  finish error ",\"reason\":$(jstr "$1")"
  echo "sealab: error: $1" >&2
  exit 1
}
reject() {  # reject WHAT EXPECTED ACTUAL: not what was sealed; nothing starts
  "$DOCKER" rm -f "$NAME" >/dev/null 2>&1
  finish rejected ",\"what\":$(jstr "$1"),\"expected\":$(jstr "$2"),\"actual\":$(jstr "$3")"
  echo "sealab: REJECTED $1: expected $2, found $3" >&2
  exit 4
}
on_signal() {  # scancel, preemption or the time limit: the container is not a child of this job
  trap '' TERM INT
  "$DOCKER" kill "$NAME" >/dev/null 2>&1
  "$DOCKER" rm -f "$NAME" >/dev/null 2>&1
  finish cancelled ",\"reason\":$(jstr "job signalled on $NODE (scancel, preemption or time limit); container killed")"
  echo "sealab: cancelled; container $NAME killed and removed" >&2
  exit 143
}
trap on_signal TERM INT
out_kb() { local kb; kb=$(du -sk "$OUT_DIR" 2>/dev/null | cut -f1); echo "${kb:-0}"; }

# 1. The image, by digest (never a tag), and its ID checked before anything is created.
echo "sealab: pulling $REF on $NODE (gpus: ${GPUS:-none})"
"$DOCKER" pull "$REF" & wait $! || fail "docker pull $REF failed on $NODE"
T_PULLED=$(date +%s.%N)
ACTUAL=$("$DOCKER" image inspect --format '{{.Id}}' "$REF" 2>/dev/null) || ACTUAL=""
[ "$ACTUAL" = "$EXPECTED" ] || reject "image pulled as $REF on $NODE" "$EXPECTED" "${ACTUAL:-nothing}"
echo "sealab: verified $REF is $EXPECTED"

# 2. The container: created (not started) by image ID with the hardening, then read back and compared.
GPU_ARGS=()
if (( NEED_GPUS > 0 )); then
  [ -n "$GPUS" ] || fail "the run asks for $NEED_GPUS GPU(s) but the allocation has none (SLURM_JOB_GPUS is empty)"
  case $GPU_MODE in
    nvidia) GPU_ARGS=(--gpus "\"device=$GPUS\"" --shm-size 1g) ;;  # quoted: unquoted device=0,1 means device 0
    env) GPU_ARGS=(--env "SEALAB_GPUS=$GPUS" --env "CUDA_VISIBLE_DEVICES=$GPUS") ;;
  esac
fi
"$DOCKER" create "${CREATE_ARGS[@]}" ${GPU_ARGS[@]+"${GPU_ARGS[@]}"} "$EXPECTED" ${COMMAND[@]+"${COMMAND[@]}"} \
  >/dev/null || fail "docker create failed on $NODE"
"$DOCKER" inspect --format "$INSPECT_FORMAT" "$NAME" > "$JOB_DIR/container.raw" || fail "docker inspect $NAME failed"
sed '/^$/d' "$JOB_DIR/container.raw" | LC_ALL=C sort > "$JOB_DIR/container.txt"
mapfile -t WANT < "$JOB_DIR/container.expected"
mapfile -t GOT < "$JOB_DIR/container.txt"
for i in "${!WANT[@]}"; do
  [ "${WANT[i]}" = "${GOT[i]:-}" ] || reject "container $NAME on $NODE" "${WANT[i]}" "${GOT[i]:-nothing}"
done
if (( NEED_GPUS > 0 )) && [ "$GPU_MODE" = nvidia ]; then  # exactly the allocation's GPUs
  DEVICES=$("$DOCKER" inspect --format '{{range .HostConfig.DeviceRequests}}{{join .DeviceIDs ","}};{{end}}' "$NAME")
  [ "$DEVICES" = "$GPUS;" ] || reject "container $NAME on $NODE: GPU device IDs" "$GPUS;" "${DEVICES:-none}"
fi
T_VERIFIED=$(date +%s.%N)

# 3. Run it; kill it at the deadline, or when /out grows over its cap.
"$DOCKER" start "$NAME" >/dev/null || fail "docker start $NAME failed on $NODE"
T_STARTED=$(date +%s.%N)
END_NS=$(( $(date +%s%N) + DEADLINE_NS ))
TIMED_OUT=false; OVER_CAP=""
while [ "$("$DOCKER" inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null)" = true ]; do
  if (( $(date +%s%N) >= END_NS )); then TIMED_OUT=true; break; fi
  if (( $(out_kb) > OUT_CAP_KB )); then OVER_CAP="/out exceeded its cap of $OUT_CAP_MB MB; killed"; break; fi
  sleep "$POLL_S" & wait $!
done
if [ "$TIMED_OUT" = true ] || [ -n "$OVER_CAP" ]; then "$DOCKER" kill "$NAME" >/dev/null 2>&1; fi
"$DOCKER" wait "$NAME" >/dev/null 2>&1 & wait $!
T_ENDED=$(date +%s.%N)
STATE=$("$DOCKER" inspect --format '{{.State.ExitCode}} {{.State.OOMKilled}}' "$NAME") ||
  fail "docker inspect $NAME failed"
read -r EXIT_CODE OOM <<< "$STATE"
"$DOCKER" logs "$NAME" > "$JOB_DIR/output.log" 2>&1
"$DOCKER" rm -f "$NAME" >/dev/null 2>&1
if [ -z "$OVER_CAP" ] && (( $(out_kb) > OUT_CAP_KB )); then OVER_CAP="/out exceeded its cap of $OUT_CAP_MB MB"; fi
finish "done" ",\"exit_code\":$EXIT_CODE,\"oom_killed\":$OOM,\"timed_out\":$TIMED_OUT,\"over_cap\":$(jstr "$OVER_CAP")" \
  ",\"image_id\":$(jstr "$EXPECTED"),\"t_pulled\":$T_PULLED,\"t_verified\":$T_VERIFIED" \
  ",\"t_started\":$T_STARTED,\"t_ended\":$T_ENDED"
echo "sealab: container exited $EXIT_CODE (oom: $OOM, timed out: $TIMED_OUT)"
