-- Inference-time (prompt-embedding optimisation per prompt) and training-time (extra
-- unconditional pass + filter per step) cost of Wen et al.'s mitigations; for the filter, the share
-- of conditioned samples it dropped among images duplicated in the training set and among unique ones.
WITH unfiltered AS (
    SELECT avg(mean_step_seconds) AS step_seconds FROM train_summary WHERE filter_threshold IS NULL
)
SELECT variant, mitigation AS what, count(*) AS prompts,
       avg(iterations) AS mean_iterations, median(initial_loss) AS median_initial_loss,
       median(final_loss) AS median_final_loss, any_value(target_loss) AS target_loss,
       avg(seconds) AS seconds_per_prompt, NULL AS step_seconds, NULL AS overhead_ratio,
       NULL AS filter_threshold, NULL AS filtered_fraction
FROM mitigation_info
WHERE iterations IS NOT NULL
GROUP BY variant, mitigation
UNION ALL BY NAME
SELECT t.variant, 'training filter' AS what, NULL AS prompts, NULL AS mean_iterations,
       NULL AS median_initial_loss, NULL AS median_final_loss, NULL AS target_loss,
       NULL AS seconds_per_prompt, t.mean_step_seconds AS step_seconds,
       t.mean_step_seconds / u.step_seconds AS overhead_ratio,
       t.filter_threshold, t.filtered_fraction_mean AS filtered_fraction,
       t.filtered_share_duplicated, t.filtered_share_unique
FROM train_summary t, unfiltered u
WHERE t.filter_threshold IS NOT NULL
ORDER BY variant, what
