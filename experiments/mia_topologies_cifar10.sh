#!/usr/bin/env bash
# Membership-inference AUC by topology: the MIA ring experiment on fully connected, ring and star graphs.
# Usage: experiments/mia_topologies_cifar10.sh [extra dfl-sim compare args, e.g. --seeds 2]
set -euo pipefail
cd "$(dirname "$0")/.."
export DFL_SIM_DATA="${DFL_SIM_DATA:-../shared/datasets}"
exec "${DFL_SIM:-.venv/bin/dfl-sim}" compare experiments/mia_ring_cifar10.yaml \
  --over topology.name=fully_connected,ring,star "$@"
