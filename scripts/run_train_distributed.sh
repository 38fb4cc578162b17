#!/usr/bin/env bash
# Data-parallel SD 2.x training with msrun (one process per device; gradients mean-reduced across all).
#
# One node, 8 NPUs:
#   scripts/run_train_distributed.sh --config configs/train/laion_8npu.yaml --data_path /data/laion
# Several nodes (run on every node, same master address/port, node_rank 0..N-1; output_dir on shared
# storage if runs are to be resumed from any node):
#   scripts/run_train_distributed.sh --worker_num 16 --local_worker_num 8 --master_addr 10.0.0.1 \
#       --node_rank 1 -- --config configs/train/laion_8npu.yaml --data_path /data/laion
#
# Launcher options (before an optional "--"; everything else goes to train_text_to_image.py):
#   --worker_num N        total processes over all nodes     (default 8)
#   --local_worker_num N  processes on this node             (default: worker_num)
#   --master_addr ADDR    address of the node with node_rank 0 (default 127.0.0.1)
#   --master_port PORT    scheduler port on the master node  (default 8118)
#   --node_rank R         this node's index                  (default 0)
#   --log_dir DIR         msrun's per-worker logs            (default output/msrun_logs)
# The same settings can come from the environment: WORKER_NUM, LOCAL_WORKER_NUM, MASTER_ADDR,
# MASTER_PORT, NODE_RANK, LOG_DIR. Worker i's log is <log_dir>/worker_<i>.log.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
worker_num="${WORKER_NUM:-8}"
local_worker_num="${LOCAL_WORKER_NUM:-}"
master_addr="${MASTER_ADDR:-127.0.0.1}"
master_port="${MASTER_PORT:-8118}"
node_rank="${NODE_RANK:-0}"
log_dir="${LOG_DIR:-output/msrun_logs}"
train_args=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --worker_num) worker_num="$2"; shift 2 ;;
    --local_worker_num) local_worker_num="$2"; shift 2 ;;
    --master_addr) master_addr="$2"; shift 2 ;;
    --master_port) master_port="$2"; shift 2 ;;
    --node_rank) node_rank="$2"; shift 2 ;;
    --log_dir) log_dir="$2"; shift 2 ;;
    --) shift; train_args+=("$@"); break ;;
    *) train_args+=("$1"); shift ;;
  esac
done
local_worker_num="${local_worker_num:-$worker_num}"

if ! command -v msrun >/dev/null 2>&1; then
  echo "run_train_distributed.sh: error: msrun not found on PATH (it comes with MindSpore >= 2.3; activate its environment)" >&2
  exit 2
fi
# msrun starts workers with the `python` found on PATH: make it the interpreter that has msrun.
export PATH="$(dirname "$(command -v msrun)"):$PATH"

mkdir -p "$log_dir"
exec msrun --worker_num="$worker_num" --local_worker_num="$local_worker_num" \
  --master_addr="$master_addr" --master_port="$master_port" --node_rank="$node_rank" \
  --log_dir="$log_dir" --join=True --cluster_time_out=600 \
  "$repo/examples/stable_diffusion_v2/train_text_to_image.py" "${train_args[@]}"
