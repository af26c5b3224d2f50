#!/bin/sh
# DP-SGD against gradient inversion under the defensive-augmentation paper's protocol: models are first
# trained with DP-SGD (sigma 0.1, 0.5, 1.0; and undefended), then the attacker inverts clean one-image,
# one-step gradients of each trained model (no noise on what it attacks). Every row trains the same
# group-norm cnn on BASE (default experiments/tables/cifar10.yaml), and the attack runs are the
# `inversion` table's attack phase started from the trained model (init.run). Writes OUT/summary.md
# (default OUT: runs/gi-pretrained-dp-<time>), a row per sigma and seed. Compare `dfl-sim table
# inversion_dp`, where the noise is on the attacked update.
#
#   sh experiments/gi_pretrained_dp_cifar10.sh [OUT]          # env: BASE, SIGMAS ("0 0.1 0.5 1.0"), SEEDS ("0"), ITERATIONS (600)
set -e
export DFL_SIM_DATA="${DFL_SIM_DATA:-../shared/datasets}"
out="${1:-runs/gi-pretrained-dp-$(date +%Y%m%d-%H%M%S)}"
base="${BASE:-experiments/tables/cifar10.yaml}"
mkdir -p "$out"
printf '| defense | seed | model acc | attack acc | PSNR | SSIM |\n|---|---|---|---|---|---|\n' > "$out/summary.md"
for sigma in ${SIGMAS:-0 0.1 0.5 1.0}; do
  for seed in ${SEEDS:-0}; do
    if [ "$sigma" = 0 ]; then dp='defenses=[]'; label='no defense'
    else dp="defenses=[{name: dp_sgd, params: {noise_multiplier: $sigma, max_grad_norm: 1.0}}]"; label="DP-SGD sigma $sigma"; fi
    model=$(dfl-sim run "$base" --set seed="$seed" --set attackers=[] --set attacks=[] --set "$dp" \
            --set model.params.norm=group --out "$out/model" --quiet | sed -n 's|^report: \(.*\)/report.md$|\1|p')
    attack=$(dfl-sim run "$base" --set seed="$seed" --set init.run="$model" --set model.params.norm=group \
             --set defenses=[] --set rounds=1 --set nodes=11 --set topology.name=fully_connected \
             --set training.local_steps=1 --set training.batch_size=1 --set training.optimizer.momentum=0.0 \
             --set "attacks=[{name: inverting_gradients, params: {iterations: ${ITERATIONS:-600}}}]" \
             --out "$out/attack" --quiet | sed -n 's|^report: \(.*\)/report.md$|\1|p')
    python - "$label" "$seed" "$model" "$attack" >> "$out/summary.md" <<'PY'
import json, sys
label, seed, model, attack = sys.argv[1:]
acc = json.load(open(f"{model}/summary.json"))["final"]["mean_test_acc"]
inv = json.load(open(f"{attack}/summary.json"))["inversion"]
key = "inverting_gradients_exact_"
print(f"| {label} | {seed} | {acc:.3f} | {inv[key + 'recognisability']:.2f} | {inv[key + 'psnr']:.2f} | {inv[key + 'ssim']:.3f} |")
PY
  done
done
cat "$out/summary.md"
