"""The records of ``metrics.jsonl``: their kinds and keys, documented once.

A run directory's ``metrics.jsonl`` holds one JSON object per line. Every record has ``round`` (1-based),
``node`` (the node it is about, or ``null`` for the whole federation) and ``kind``; non-finite numbers
are written as ``null`` and read back as NaN (:meth:`dfl.rundir.RunDir.records`). Within a round the
records come in a fixed order: ``train`` per node, then what the observers add (``mia``, ``dp_audit``,
``inversion``, ``defense``), then ``eval`` per node in evaluation rounds, then the ``round`` summary
(:meth:`dfl.federation.rounds.Federation.run_round`, the one record builder). A ``fault`` record
marks a recovery.

Keys beyond ``round``, ``node`` and ``kind``, by kind:

``train``
    ``loss`` (mean local training loss), ``steps`` (local steps taken); ``dp_epsilon`` for nodes that
    run ``dp_sgd`` (Opacus's RDP epsilon for every local step so far). With ``mode: async`` (one record
    per node and interval, :mod:`dfl.federation.asynchronous`): ``iterations`` started in the interval,
    messages ``sent``, ``received``, ``lost`` (arrived while it was offline) and ``mixed``, the mixed
    messages' age in simulated time
    (``staleness_mean``, ``staleness_max``) and in iterations behind (``lag_mean``, ``lag_max``).
``eval``
    ``{split}_acc`` and ``{split}_loss`` for each split of ``eval.splits`` (train, holdout, test).
``round``
    ``edges`` (live edges of the round's graph), ``train_loss`` (mean over nodes), ``consensus_distance``
    (mean distance of the nodes' states to their average after mixing), ``spectral_gap`` of the round's
    mixing matrix (``1 - |lambda_2|``, 6 significant digits; ``null`` above 1,000 nodes:
    :mod:`dfl.metrics.graph`), with ``mode: async`` the simulated ``time`` at the interval's end and the
    ``messages`` delivered in it, and, in evaluation rounds,
    ``mean_{split}_acc`` / ``mean_{split}_loss`` over nodes.
``mia``
    ``node`` is the victim. ``attacker``, ``attack``, ``access`` (query or params), ``members`` and
    ``non_members`` (sample counts) and ``non_members_from``; the scores' ``auc``, ``tpr_at_1_fpr``,
    ``tpr_at_0.1_fpr``, ``tpr_at_0.01_fpr`` (``null`` where the non-members cannot resolve the rate),
    ``fpr_floor`` (``1 / non_members``), ``advantage``, ``roc_tpr`` (TPR on
    ``dfl.metrics.membership.ROC_POINTS``); the reference-model budget: ``reference_models`` (shadow or
    reference models the attack used, 0 for none), ``reference_mode`` (``offline``: OUT models only;
    ``online``: IN and OUT per target; ``null`` without) and, for ``rmia``, ``population`` (and offline,
    ``offline_a``); ``signals``, with ``output.signals``: the record's per-sample
    export, a path relative to the run directory (format: ``dfl.adversary.membership.SIGNALS_FORMAT``); the
    oracle threshold's ``oracle_accuracy`` / ``_precision`` / ``_recall`` / ``_f1``; the all-member
    ``baseline_accuracy`` / ``baseline_f1``; for calibrated attacks their own ``accuracy``,
    ``precision``, ``recall``, ``f1`` (and ``threshold`` where there is one); the victim's
    ``victim_train_acc``, ``victim_holdout_acc``, ``victim_gap`` and the accuracy of its answers on
    members and non-members (``answered_member_acc``, ``answered_non_member_acc``); ``view`` (with
    ``access: params``: ``received``, ``own`` or ``isolated``, :func:`dfl.adversary.membership.view_state`;
    ``null`` for ``query``); ``evasion`` (the adaptive attacker's query transforms,
    :mod:`dfl.adversary.evasion`, e.g. ``flip+translate:2``; ``null`` without) and ``detected`` (the
    fraction of the attack's queries the victim's recognising query-time defense flagged, e.g.
    AugMixCloak's pHash matches; ``null`` without one); the graph context (:mod:`dfl.metrics.graph`): ``hops`` between attacker
    and victim and each one's ``degree``, ``betweenness`` and ``closeness`` (``attacker_degree``, ...,
    ``victim_closeness``; ``betweenness_pivots`` where betweenness is estimated); with ``mode: async``
    and ``access: params``, ``message_time`` (when the attacked message was sent); for a victim that
    runs ``dp_sgd``, the DP audit (:mod:`dfl.metrics.audit`): the accountant's ``dp_epsilon`` and
    ``dp_delta`` after this round, ``epsilon_lower`` (the empirical 95 % lower bound from these scores),
    ``audit_threshold``, ``fpr_upper``, ``fnr_upper`` and ``audit_samples``.
``dp_audit``
    ``node`` is a victim that runs ``dp_sgd``, one record per round it was attacked: ``epsilon`` and
    ``delta`` (its accountant's), ``epsilon_lower`` (the largest bound of the round's membership
    attacks on it), the ``attack``, ``attacker``, ``access`` and ``view`` that gave it,
    ``attacks_audited``, and ``violation`` (``epsilon_lower > epsilon``: a bug, which the report names).
``inversion``
    ``node`` is the victim. ``attacker``, ``attack``, ``knowledge`` (exact or observed start state),
    ``update``, ``local_steps``, ``batch_size``, ``images_trained_on``; the reconstruction's ``mse``,
    ``psnr``, ``ssim`` (after :func:`dfl.metrics.images.pair`), ``label_acc``, ``recognisability`` (the
    reference classifier's accuracy on it, beside its ``reference_test_acc``), ``start_error``,
    ``final_mismatch``, ``iterations`` and ``seconds`` (wall time: the one field that is not a
    function of config and seed); ``grid`` names its image file when plots are on; the graph context
    as for ``mia``.
``defense``
    What a defense reports while it works: ``defense`` (its registered name) and the defense's own
    keys (MemGuard's refits, AugMixCloak's tuned ``intensity`` and ``alpha``, ...).
``fault``
    ``nodes`` (the participants lost), ``error``, ``resumed_from_round`` (the checkpoint rolled back to).
"""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]

TRAIN, EVAL, ROUND, MIA, INVERSION, DEFENSE, FAULT = "train", "eval", "round", "mia", "inversion", "defense", "fault"
DP_AUDIT = "dp_audit"

COMMON = ("round", "node", "kind")

#: the keys every record of a kind carries, beyond ``COMMON`` (``eval`` keys depend on ``eval.splits``)
REQUIRED: dict[str, tuple[str, ...]] = {
    TRAIN: ("loss", "steps"),
    EVAL: (),
    ROUND: ("edges", "train_loss", "consensus_distance", "spectral_gap"),
    MIA: ("attacker", "attack", "access", "members", "non_members", "auc", "tpr_at_1_fpr", "tpr_at_0.1_fpr",
          "tpr_at_0.01_fpr", "fpr_floor", "reference_models", "reference_mode", "advantage", "roc_tpr", "oracle_accuracy", "baseline_accuracy", "victim_train_acc", "victim_holdout_acc",
          "victim_gap", "view", "hops", "attacker_degree", "victim_degree"),
    DP_AUDIT: ("epsilon", "delta", "epsilon_lower", "attack", "attacker", "violation"),
    INVERSION: ("attacker", "attack", "knowledge", "batch_size", "mse", "psnr", "ssim", "label_acc",
                "recognisability", "iterations", "seconds", "hops", "attacker_degree", "victim_degree"),
    DEFENSE: ("defense",),
    FAULT: ("nodes", "error", "resumed_from_round"),
}

#: fields that are not a function of config and seed (left out when runs are compared)
WALL_CLOCK = {INVERSION: ("seconds",)}


def record_errors(record: Record, splits: tuple[str, ...] = ("train", "holdout", "test")) -> list[str]:
    """What ``record`` lacks of its kind's keys (``[]`` when it is well formed); ``splits``: ``eval.splits``."""
    missing = [k for k in COMMON if k not in record]
    kind = record.get("kind")
    if kind not in REQUIRED:
        return [*missing, f"unknown kind {kind!r}; known kinds: {', '.join(REQUIRED)}"]
    need = list(REQUIRED[kind])
    if kind == EVAL:
        need += [f"{s}_{m}" for s in splits for m in ("acc", "loss")]
    return missing + [k for k in need if k not in record]
