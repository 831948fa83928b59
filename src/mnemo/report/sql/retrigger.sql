-- Finding Dori's re-trigger test: similarity of samples to the optimisation target, with the
-- prompt's memorization neurons blocked, before and after optimising a prompt embedding.
SELECT variant, arm, count(*) AS prompts,
       median(similarity_before) AS median_similarity_before,
       median(similarity_after) AS median_similarity_after,
       avg(CAST(replicated_after AS DOUBLE)) AS replicated_after_rate,
       any_value(threshold) AS threshold, any_value(optimisation_steps) AS optimisation_steps,
       median(final_loss) AS median_final_loss, avg(seconds) AS seconds_per_prompt
FROM retrigger
GROUP BY variant, arm
ORDER BY variant, arm DESC
