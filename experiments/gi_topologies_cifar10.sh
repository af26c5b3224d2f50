#!/bin/sh
# The topology effect on gradient inversion with observed knowledge: fully connected (the attacker sees
# every state, so its estimate of a victim's start is exact), ring and star (it is not), side by side.
# Writes runs/compare-gi_ring_cifar10-<time>/comparison.md with PSNR, SSIM, recognisability and the
# start-state error per attack and knowledge.
set -e
export DFL_SIM_DATA="${DFL_SIM_DATA:-../shared/datasets}"
dfl-sim compare experiments/gi_ring_cifar10.yaml --over topology.name=fully_connected,ring,star "$@"
