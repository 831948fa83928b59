-- NeMo neurons per localized prompt (median and MAD over prompts), success rate, and the cost
-- of the search per prompt for each mode (batched masks vs one candidate per UNet call). With the
-- sample check, `pruned` is what NeMo's refinement alone kept and `widened` counts the prompts
-- whose samples still copied with it, so the check widened the set.
WITH per_prompt AS (
    SELECT n.variant, n.mode, n.prompt_id, p."group", n.success, n.refined_count, n.initial_count,
           n.pruned_count, n.sample_checks, n.sample_seconds, n.unet_calls, n.seconds
    FROM neurons n JOIN prompts p USING (prompt_id)
    WHERE n.memorized
), med AS (
    SELECT variant, mode, median(refined_count) AS m_refined, median(initial_count) AS m_initial
    FROM per_prompt GROUP BY ALL
)
SELECT p.variant, p.mode,
       count(*)                                        AS prompts,
       count(*) FILTER (WHERE p."group" = 'planted')   AS planted_prompts,
       avg(CAST(p.success AS DOUBLE))                  AS success_rate,
       any_value(m.m_refined)                          AS median_neurons,
       median(abs(p.refined_count - m.m_refined))      AS mad_neurons,
       any_value(m.m_initial)                          AS median_initial_neurons,
       median(p.pruned_count)                          AS median_pruned_neurons,
       count(*) FILTER (WHERE p.refined_count > p.pruned_count) AS widened,
       median(p.unet_calls)                            AS median_unet_calls,
       avg(p.unet_calls)                               AS mean_unet_calls,
       median(p.seconds)                               AS median_seconds,
       avg(p.seconds)                                  AS mean_seconds,
       median(p.sample_seconds)                        AS median_sample_check_seconds
FROM per_prompt p JOIN med m USING (variant, mode)
GROUP BY p.variant, p.mode
ORDER BY p.variant, p.mode
