-- One row per descriptor x variant x mitigation x guidance x prompt group: how often samples
-- replicate a training image, how similar the closest one is, patient-level leakage, diversity.
-- Rates are over samples; similarity quantiles over prompts (each prompt's max similarity).
-- "Beyond held-out": the nearest training image beats the nearest held-out patient's image by the
-- margin that held-out images themselves exceed at the calibration's false-positive rate.
SELECT descriptor, variant, mitigation, guidance, "group",
       count(*)                                           AS prompts,
       sum(samples)                                       AS samples,
       sum(replication_rate_0_5 * samples) / sum(samples)        AS rate_at_0_5,
       sum(replication_rate_0_7 * samples) / sum(samples)        AS rate_at_0_7,
       sum(replication_rate_calibrated * samples) / sum(samples) AS rate_at_calibrated,
       any_value(threshold_calibrated)                    AS calibrated_threshold,
       sum(replication_rate_beyond_heldout * samples) / sum(samples) AS rate_beyond_heldout,
       any_value(heldout_margin)                          AS heldout_margin,
       median(max_similarity)                             AS median_max_similarity,
       quantile_cont(max_similarity, 0.95)                AS p95_max_similarity,
       median(median_similarity)                          AS median_similarity,
       median(max_source_similarity)                      AS median_max_source_similarity,
       sum(same_patient_rate * samples) / sum(samples)    AS same_patient_rate,
       median(diversity)                                  AS median_diversity,
       any_value(recipe)                                  AS recipe
FROM match_prompts
GROUP BY ALL
ORDER BY descriptor, variant, mitigation, guidance, "group"
