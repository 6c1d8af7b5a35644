"""Verification metrics (numpy only) and their reports (tables, ROC plots)."""
from facejax.evaluation.report import plot_roc, results_markdown, summary_row
from facejax.evaluation.verification import (auc, compare, eer, evaluate, evaluate_distances, kfold_ids,
                                             pair_distances, roc_curve)
