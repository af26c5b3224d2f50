#!/usr/bin/env bash
# Compare fully connected, ring and star on CIFAR-10 (3 seeds each); writes one comparison table.
# Usage: experiments/compare_topologies.sh [extra dfl-sim compare args, e.g. --set rounds=5]
set -euo pipefail
cd "$(dirname "$0")/.."
export DFL_SIM_DATA="${DFL_SIM_DATA:-../shared/datasets}"
exec "${DFL_SIM:-.venv/bin/dfl-sim}" compare experiments/ring_cifar10.yaml \
  --over topology.name=fully_connected,ring,star --seeds "${SEEDS:-3}" "$@"
