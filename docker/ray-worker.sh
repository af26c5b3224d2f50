#!/bin/sh
# A Ray worker node that holds one GPU of the host, so that `--scale ray-worker=N` spreads N replicas
# over N GPUs. Every replica sees all the GPUs (`count: all` in compose.yaml); each claims the first GPU
# whose lock file in the shared volume $GPU_LOCK_DIR it can lock, keeps the lock for its lifetime (the
# kernel drops it when the container stops), and offers only that GPU to Ray.
#
# Environment: RAY_HEAD (default ray-head:6379), GPU_LOCK_DIR (default /gpu-locks),
# CPUS_PER_WORKER (default: the host's CPUs / its GPUs, at least 1).
set -eu

lock_dir=${GPU_LOCK_DIR:-/gpu-locks}
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [ "${gpus:-0}" -eq 0 ]; then
    echo "ray-worker: no GPU is visible in this container; install the NVIDIA Container Toolkit" \
         "(README.md, Multi-GPU hosts) or run without ray-worker (GPUS_PER_ACTOR=0)" >&2
    exit 1
fi
cpus=${CPUS_PER_WORKER:-$(( $(nproc) / gpus ))}
[ "$cpus" -ge 1 ] || cpus=1

i=0
while [ "$i" -lt "$gpus" ]; do
    exec 9>"$lock_dir/gpu$i"
    if flock -n 9; then
        # nvidia-smi numbers GPUs in PCI bus order; make CUDA (and so Ray's actors) number them alike.
        export CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES="$i"
        echo "ray-worker: GPU $i of $gpus, $cpus CPUs"
        exec ray start --address="${RAY_HEAD:-ray-head:6379}" --num-gpus=1 --num-cpus="$cpus" --block
    fi
    i=$((i + 1))
done
echo "ray-worker: all $gpus GPUs are held by other replicas; scale ray-worker to at most $gpus" >&2
exit 1
