#!/usr/bin/env bash
# bench/checkpoint_upload.py on the GPU machine (16 cores, local NVMe), after unpack.sh, from the copy in .gpu-src:
#   bash tests/gpu/checkpoint_bench.sh [SIZE_GB] [REPEAT]
# Needs bin/s5cmd (`python -m localcluster.build s5cmd`, copied from ~/.cache/loka/bin) and bin/awscrt-*.whl
# (awscrt==0.38.0 for cp312, `pip download`) beside it; MinIO comes from the bundle (/tmp/lk/minio).
set -euo pipefail
size=${1:-10}
repeat=${2:-1}
here=$(pwd)
python3 -m zipfile -e bin/awscrt-*.whl /tmp/lk/site
chmod +x bin/s5cmd
export PATH=$here/bin:$PATH PYTHONPATH=/tmp/lk/site:$here/api:$here/trainer-image:$here
export AWS_ACCESS_KEY_ID=lokabench AWS_SECRET_ACCESS_KEY=lokabench-secret AWS_DEFAULT_REGION=us-east-1
store=${BENCH_MINIO_DIR:-/tmp/bench-minio}  # MinIO's drive; /dev/shm when the local disk cannot hold 3x the size
rm -rf "$store" && mkdir -p "$store" /tmp/bench-work
MINIO_ROOT_USER=$AWS_ACCESS_KEY_ID MINIO_ROOT_PASSWORD=$AWS_SECRET_ACCESS_KEY \
  /tmp/lk/minio server "$store" --address 127.0.0.1:9310 --console-address 127.0.0.1:9311 >/tmp/bench-minio.log 2>&1 &
minio=$!
trap 'kill $minio' EXIT
for _ in $(seq 60); do curl -sf http://127.0.0.1:9310/minio/health/live >/dev/null && break; sleep 0.5; done
for layout in large small; do
  echo "== $layout files, ${size} GB"
  python3 bench/checkpoint_upload.py --endpoint http://127.0.0.1:9310 --minio-pid $minio --size "${size}GB" \
    --layout $layout --repeat "$repeat" --workdir /tmp/bench-work
done
