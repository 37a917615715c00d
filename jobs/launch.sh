# Sourced by jobs/run-mpirun.sh and jobs/slurm/train-job.sh: run a launch
# command (mpirun or srun) in the background, turn a TERM or USR1 that this
# shell receives into a USR1 for it (Open MPI's mpirun forwards USR1 to the
# ranks but ends them on TERM within a second, mid-step), and wait for its
# exit code, which lands in DM_RC.
#
#   dm_launch mpirun -np 2 build/diffmpi train ...; exit "$DM_RC"
#
# A run stopped that way checkpoints, says so in its last line and exits 3.
# mpirun then adds its banner for a non-zero exit ("Primary job terminated
# normally, but 1 process returned a non-zero exit code ..." and a block
# naming the rank and "Exit code: 3"), which reads as a crash in a Slurm
# log: stderr passes through a filter that drops those two blocks when the
# exit code they name is 3 and keeps everything else, as it comes.

# Copy stdin to stderr, holding back each block between two lines of dashes
# until it is complete: the block that names exit code 3 and the "Primary
# job terminated normally" block before it are dropped.
dm_drop_stop_banner() {
    local line held="" in_block=0 primary=""
    while IFS= read -r line || [[ -n $line ]]; do
        if ((!in_block)); then
            if [[ $line =~ ^-{20,}$ ]]; then
                in_block=1 held=$line$'\n'
            else
                # not the exit-3 block after all: what was held goes first
                printf '%s%s\n' "$primary" "$line" >&2
                primary=""
            fi
            continue
        fi
        held+=$line$'\n'
        [[ $line =~ ^-{20,}$ ]] || continue
        in_block=0
        if [[ $held == *"Primary job  terminated normally"* ]]; then
            primary=$held # printed only if what follows is not exit code 3
        elif [[ $held == *"non-zero status"* && $held =~ Exit\ code:\ +3$'\n' ]]; then
            primary=""
        else
            printf '%s%s' "$primary" "$held" >&2
            primary=""
        fi
        held=""
    done
    printf '%s%s' "$primary" "$held" >&2
}

dm_launch() {
    # The filter reads a named pipe of its own, so that this shell can wait
    # for it to write the last of stderr before the caller goes on.
    local dir fpid pid caught
    dir=$(mktemp -d "${TMPDIR:-/tmp}/diffmpi-launch.XXXXXX") || return 1
    mkfifo "$dir/stderr"
    dm_drop_stop_banner < "$dir/stderr" &
    fpid=$!
    "$@" 2> "$dir/stderr" &
    pid=$!
    trap 'caught=1; kill -USR1 "$pid" 2>/dev/null' USR1 TERM
    # A trapped signal makes `wait` return 128+N at once: wait again for
    # the run's own exit code. Not `while kill -0 "$pid"`: a run that ends
    # as the signal arrives is already reaped, and its code (0) would be
    # lost to 138.
    while :; do
        caught=0 DM_RC=0
        wait "$pid" || DM_RC=$?
        ((caught && DM_RC > 128)) || break
    done
    trap - USR1 TERM
    wait "$fpid" 2>/dev/null || true
    rm -rf "$dir"
}
