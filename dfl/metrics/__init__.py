"""Pure functions of scores, labels and images: ``membership`` (ROC, TPR at FPR, thresholds, decision
metrics), ``images`` (MSE, PSNR, SSIM and the pairing of reconstructions), ``signals`` (the per-sample
membership signals attacks and defenses compute from a model's outputs). Imports nothing of dfl-sim."""
