-- The run's search mode against one-by-one search (or lockstep, when one by one is the run's mode) on
-- the same prompts: they must find the same neurons; their UNet calls and seconds (a lockstep prompt's
-- are its share of the calls it rode on).
SELECT a.variant, a.mode, b.mode AS compared_with, count(*) AS prompts,
       count(*) FILTER (WHERE a.initial_neurons = b.initial_neurons) AS same_initial_neurons,
       count(*) FILTER (WHERE a.refined_neurons = b.refined_neurons) AS same_neurons,
       round(sum(a.unet_calls), 1) AS calls, round(sum(b.unet_calls), 1) AS compared_calls,
       round(sum(a.unet_calls) / sum(b.unet_calls), 4) AS call_ratio,
       round(sum(a.seconds), 2) AS seconds, round(sum(b.seconds), 2) AS compared_seconds,
       round(sum(a.seconds) / sum(b.seconds), 4) AS seconds_ratio
FROM neurons a JOIN neurons b USING (variant, prompt_id)
WHERE a.mode = (SELECT primary_mode FROM settings) AND b.mode <> a.mode AND a.memorized
GROUP BY ALL
ORDER BY a.variant
