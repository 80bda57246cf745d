# s3-ranks: runs "$@" once per rank of this pod (LOCAL_RANK=0..S3_RANKS_PER_POD-1,
# one GPU each) and exits with the first failure. A rank that failed takes the others
# down at once: they would wait in the all-reduce for it until their timeout.
# SIGTERM (preemption, deletion) goes to every rank: each checkpoints and exits 75.
set -u
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501)); then
  echo "s3-ranks: needs bash 5.1 or newer (wait -p), found $BASH_VERSION" >&2
  exit 2
fi
n=${S3_RANKS_PER_POD:?S3_RANKS_PER_POD is not set}
declare -A rank_of=()
trap 'kill -TERM "${!rank_of[@]}" 2>/dev/null' TERM INT
for ((i = 0; i < n; i++)); do
  LOCAL_RANK=$i "$@" &
  rank_of[$!]=$i
done
status=0
while ((${#rank_of[@]} > 0)); do
  unset ended
  # Any child: the ranks are the only ones (with pids, bash 5.2 forgets ranks that
  # ended before the call).
  wait -n -p ended
  code=$?
  if [[ ! -v ended ]]; then
    # A trapped signal interrupted the wait; 127: no child left to wait for.
    ((code == 127)) && break
    continue
  fi
  r=${rank_of[$ended]}
  unset "rank_of[$ended]"
  ((code == 0)) && continue
  echo "s3-ranks: local rank $r exited with code $code" >&2
  # 75 (checkpointed, preempted) is what every rank reports after a stop; any other
  # failure is the one to report.
  if ((status == 0 || (status == 75 && code != 75))); then
    status=$code
  fi
  if ((code != 75 && ${#rank_of[@]} > 0)); then
    kill -KILL "${!rank_of[@]}" 2>/dev/null
  fi
done
exit "$status"
