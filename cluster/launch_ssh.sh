#!/usr/bin/env bash
# Starts `workbench cluster node` for every rank of a hosts file, over ssh.
#
#   cluster/launch_ssh.sh HOSTS.yaml SCENARIO [workbench cluster node options...]
#
#   e.g.  cluster/launch_ssh.sh runs/deploy/hosts.yaml scenarios/quickstart.yaml \
#             --out runs/two-machines --set rounds=600
#
# For rank r (the r-th entry of the hosts file's `nodes`) it runs, on that
# entry's `host` through `ssh -o BatchMode=yes HOST bash -s`:
#
#   cd "$WORKBENCH_DIR" && . "$WORKBENCH_VENV/bin/activate" &&
#   workbench cluster node SCENARIO --hosts HOSTS.yaml --rank r [options...]
#
# and writes that node's output to $LOG_DIR/node-<r>.log on this machine. Every
# rank gets the same options (`--out` only matters to rank 0, which writes the
# run directory on its own machine). Rank 0 waits up to the hosts file's
# startup_timeout for the others, so the start order does not matter. The
# script waits for every node and exits with rank 0's status; Ctrl-C (or
# SIGTERM) stops every node it started.
#
# Assumes:
#   - the same checkout at $WORKBENCH_DIR, with its venv at $WORKBENCH_VENV, on
#     every machine;
#   - HOSTS.yaml and SCENARIO are paths relative to $WORKBENCH_DIR (or absolute
#     ones), present on every machine: the hosts file, and each machine's own
#     node-<rank>.key_secret in its secret_keys directory. HOSTS.yaml is also
#     read here, at the path as given, to list the hosts;
#   - ssh logs in to each host without a prompt (keys or an agent); put user
#     names, other ssh ports or jump hosts in ~/.ssh/config under the host's
#     name as written in the hosts file;
#   - python3 with PyYAML here (the project's venv has it).
#
# Environment:
#   WORKBENCH_DIR   checkout path on every machine   (default: the current directory)
#   WORKBENCH_VENV  venv path on every machine       (default: $WORKBENCH_DIR/.venv)
#   LOG_DIR         where the node logs go, here     (default: logs)
set -euo pipefail

usage() {
    echo "usage: $0 HOSTS.yaml SCENARIO [workbench cluster node options...]" >&2
    exit 2
}
[[ $# -ge 2 ]] || usage
hosts_file=$1
scenario=$2
shift 2
case $hosts_file in -*) usage ;; esac

WORKBENCH_DIR=${WORKBENCH_DIR:-$PWD}
WORKBENCH_VENV=${WORKBENCH_VENV:-$WORKBENCH_DIR/.venv}
LOG_DIR=${LOG_DIR:-logs}
SSH=(ssh -o BatchMode=yes -o ConnectTimeout=20)

# One host per line, rank 0 first.
# shellcheck disable=SC2016  # a Python program, not shell
host_lines=$(python3 -c '
import sys

try:
    import yaml
except ImportError:
    sys.exit("launch_ssh: this python3 has no PyYAML; activate the project venv")
path = sys.argv[1]
try:
    with open(path) as f:
        data = yaml.safe_load(f)
except (OSError, yaml.YAMLError) as e:
    sys.exit(f"launch_ssh: cannot read hosts file {path}: {e}")
nodes = data.get("nodes") if isinstance(data, dict) else None
if not isinstance(nodes, list) or not nodes:
    sys.exit(f"launch_ssh: hosts file {path}: no `nodes:` list")
for rank, node in enumerate(nodes):
    host = str(node.get("host") or "") if isinstance(node, dict) else ""
    if not host or host.startswith("-") or any(c.isspace() for c in host):
        sys.exit(f"launch_ssh: hosts file {path}: nodes[{rank}] has no usable host")
    print(host)
' "$hosts_file")
mapfile -t hosts <<<"$host_lines"

mkdir -p "$LOG_DIR"

# The script a rank's remote bash runs: every argument quoted with %q.
remote_script() {
    local rank=$1
    shift
    # shellcheck disable=SC2016  # $$ and $(hostname) expand on the remote side
    printf 'echo "launch_ssh: pid $$ on $(hostname)"'
    printf ' && cd %q' "$WORKBENCH_DIR"
    printf ' && . %q' "$WORKBENCH_VENV/bin/activate"
    printf ' && export PYTHONUNBUFFERED=1'
    printf ' && exec'
    printf ' %q' workbench cluster node "$scenario" --hosts "$hosts_file" --rank "$rank" "$@"
    printf '\n'
}

pids=()
# shellcheck disable=SC2329  # called by the trap
stop_all() {
    trap - INT TERM
    echo "launch_ssh: stopping the nodes" >&2
    local rank pid
    for rank in "${!hosts[@]}"; do
        pid=$(sed -n 's/^launch_ssh: pid \([0-9][0-9]*\) on .*/\1/p' \
            "$LOG_DIR/node-$rank.log" 2>/dev/null | head -n 1) || true
        if [[ -n $pid ]]; then
            "${SSH[@]}" -- "${hosts[rank]}" "kill $pid" </dev/null 2>/dev/null || true
        fi
    done
    if [[ ${#pids[@]} -gt 0 ]]; then
        kill "${pids[@]}" 2>/dev/null || true
    fi
    wait || true
    exit 130
}
trap stop_all INT TERM

for rank in "${!hosts[@]}"; do
    log="$LOG_DIR/node-$rank.log"
    echo "launch_ssh: rank $rank on ${hosts[rank]}, log $log"
    "${SSH[@]}" -- "${hosts[rank]}" bash -s >"$log" 2>&1 \
        <<<"$(remote_script "$rank" "$@")" &
    pids[rank]=$!
done

status=0
for rank in "${!pids[@]}"; do
    if wait "${pids[rank]}"; then rc=0; else rc=$?; fi
    echo "launch_ssh: rank $rank on ${hosts[rank]} exited with status $rc"
    if [[ $rank -eq 0 ]]; then
        status=$rc
        if [[ $rc -eq 0 ]]; then
            tail -n 1 "$LOG_DIR/node-0.log"
        else
            echo "launch_ssh: rank 0 failed; see $LOG_DIR/node-0.log:" >&2
            tail -n 5 "$LOG_DIR/node-0.log" >&2 || true
        fi
    fi
done
exit "$status"
