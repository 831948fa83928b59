-- Detector quality against planted truth and measured replication (computed per variant by the
-- validate_detection rule from per-prompt scores).
SELECT variant, detector, "n", steps, truth, positives, negatives,
       round(auc, 4) AS auc, round(tpr_at_1pct_fpr, 4) AS tpr_at_1pct_fpr,
       round(spearman_vs_similarity, 4) AS spearman_vs_similarity
FROM detection_metrics
ORDER BY variant, truth, detector
