-- NeMo neurons per localized prompt (median and MAD over prompts), success rate, and the cost of
-- the search per prompt for each mode (batched masks vs one candidate per UNet call), per prompt
-- group (the prompt file's VM/TM/memorized/nonmemorized, or planted/other/heldout) and NeMo
-- detection's flag (`flagged`: a sample above tau at detection's seeds). Which prompts are localized
-- is `localize.prompts` (flagged, as NeMo does, flagged unmemorized prompts included; memorized; all).
-- `searched`: prompts with a localization sample above tau (the others need no search); the neuron
-- counts are over those. Neurons are NeMo's refined sets; `relaxed` counts prompts no selection
-- removed the signal for (refined against the last selection's score, as the official code does).
-- With the sample check, `checked` is its widened set (the nemo_checked mitigation) and `widened`
-- counts the prompts it widened.
WITH per_prompt AS (
    SELECT n.variant, n.mode, n.prompt_id, p."group", coalesce(s.nemo_flagged, false) AS flagged,
           n.memorized AS searched, n.success, n.refined_count, n.initial_count, n.relaxed, n.checked_count,
           n.sample_checks, n.sample_seconds, n.unet_calls, n.seconds
    FROM neurons n
    JOIN prompts p USING (prompt_id)
    LEFT JOIN scores s ON s.variant = n.variant AND s.prompt_id = n.prompt_id
), med AS (
    SELECT variant, mode, "group", flagged,
           median(refined_count) FILTER (WHERE searched) AS m_refined,
           median(initial_count) FILTER (WHERE searched) AS m_initial
    FROM per_prompt GROUP BY ALL
)
SELECT p.variant, p.mode, p."group", p.flagged,
       count(*)                                        AS prompts,
       count(*) FILTER (WHERE p.searched)              AS searched,
       avg(CAST(p.success AS DOUBLE)) FILTER (WHERE p.searched) AS success_rate,
       count(*) FILTER (WHERE p.searched AND p.relaxed) AS relaxed,
       any_value(m.m_refined)                          AS median_neurons,
       median(abs(p.refined_count - m.m_refined)) FILTER (WHERE p.searched) AS mad_neurons,
       any_value(m.m_initial)                          AS median_initial_neurons,
       median(p.checked_count) FILTER (WHERE p.checked_count > 0) AS median_checked_neurons,
       count(*) FILTER (WHERE p.checked_count > p.refined_count) AS widened,
       median(p.unet_calls)                            AS median_unet_calls,
       avg(p.unet_calls)                               AS mean_unet_calls,
       median(p.seconds)                               AS median_seconds,
       avg(p.seconds)                                  AS mean_seconds,
       median(p.sample_seconds)                        AS median_sample_check_seconds
FROM per_prompt p JOIN med m USING (variant, mode, "group", flagged)
GROUP BY p.variant, p.mode, p."group", p.flagged
ORDER BY p.variant, p.mode, p."group", p.flagged DESC
