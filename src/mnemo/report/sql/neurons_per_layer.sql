-- Where the refined memorization neurons sit: count per value layer over all localized prompts.
SELECT variant, layer, count(*) AS neurons, count(DISTINCT prompt_id) AS prompts
FROM (
    SELECT variant, prompt_id, unnest(refined_layers) AS layer
    FROM neurons
    WHERE mode = (SELECT primary_mode FROM settings)
)
GROUP BY ALL
ORDER BY variant, layer
