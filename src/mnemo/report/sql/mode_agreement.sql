-- Batched and one-by-one searches must find the same neurons; their UNet calls per prompt.
SELECT b.variant, count(*) AS prompts,
       count(*) FILTER (WHERE b.refined_neurons = s.refined_neurons) AS same_neurons,
       sum(b.unet_calls) AS batched_calls, sum(s.unet_calls) AS sequential_calls,
       round(sum(b.unet_calls) / sum(s.unet_calls), 4) AS call_ratio,
       round(sum(b.seconds), 2) AS batched_seconds, round(sum(s.seconds), 2) AS sequential_seconds
FROM neurons b JOIN neurons s USING (variant, prompt_id)
WHERE b.mode = 'batched' AND s.mode = 'sequential' AND b.memorized
GROUP BY b.variant
ORDER BY b.variant
