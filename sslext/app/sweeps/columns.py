"""What a sweep reports of each cell: the final metrics (with their table labels), the headline ones, the curves."""

# Final metrics reported per cell, with the label used in tables.
METRICS = {
    "linear_acc": "linear probe, 100 % labels (%)",
    "linear_acc_10pct": "linear probe, 10 % labels (%)",
    "knn_acc": "kNN (%)",
    "backbone_rankme": "backbone RankMe",
    "projector_rankme": "projector RankMe",
    "backbone_dead_frac": "backbone dead dims (fraction)",
    "projector_dead_frac": "projector dead dims (fraction)",
}
HEADLINE = ("linear_acc", "linear_acc_10pct", "knn_acc")
CURVES = {
    "knn_acc": "kNN (%)",
    "online_probe_acc": "online probe (%)",
    "backbone_rankme": "backbone RankMe",
    "projector_rankme": "projector RankMe",
}
