-- Effect of each mitigation per prompt group, per descriptor at its own calibrated threshold: the
-- prompt file's groups on the Stable Diffusion track (VM, TM or memorized, and nonmemorized), planted
-- and 'not planted' (ordinary and held-out together) on the X-ray track. Prompts with no replicated
-- sample, replication rate, similarity;
-- plus similarity of each sample to its unmitigated twin (same seed) in that descriptor's space.
-- "Own" columns count only copies of the prompt's own training images (NeMo's SSCD_Orig): a
-- model that copies many training images can stop copying the memorized one and still copy others.
WITH prompt_rows AS (
    SELECT *, CASE WHEN "group" IN ('other', 'heldout') THEN 'not planted' ELSE "group" END AS prompts_of
    FROM match_prompts
), own AS (
    SELECT m.descriptor, m.variant, m.mitigation, m.guidance, m.prompt_id,
           avg(CAST(m.source_similarity > p.threshold_calibrated AS DOUBLE)) AS own_rate
    FROM matches m
    JOIN match_prompts p USING (descriptor, variant, mitigation, guidance, prompt_id)
    WHERE m.source_similarity IS NOT NULL
    GROUP BY ALL
), twins AS (
    SELECT e.descriptor, m.variant, m.mitigation, m.guidance, m.prompt_id,
           list_cosine_similarity(e.embedding::FLOAT[], u.embedding::FLOAT[]) AS twin_similarity
    FROM samples_primary m
    JOIN embeddings e ON e.variant = m.variant AND e.mitigation = m.mitigation AND e.id = m.sample_id
    JOIN embeddings u ON u.descriptor = e.descriptor AND u.variant = m.variant AND u.mitigation = 'none'
                     AND u.id = m.sample_id
), twin_prompt AS (
    SELECT descriptor, variant, mitigation, guidance, prompt_id, avg(twin_similarity) AS twin_similarity
    FROM twins GROUP BY ALL
)
SELECT r.variant, r.mitigation, r.guidance, r.descriptor,
       r.prompts_of,
       count(*)                                                          AS prompts,
       avg(CAST(r.replication_rate_calibrated = 0 AS DOUBLE))            AS prompts_without_replication,
       sum(r.replication_rate_calibrated * r.samples) / sum(r.samples)   AS replication_rate,
       sum(r.replication_rate_beyond_heldout * r.samples) / sum(r.samples) AS replication_rate_beyond_heldout,
       avg(CAST(o.own_rate = 0 AS DOUBLE))                               AS prompts_without_own_replication,
       avg(CAST(r.median_source_similarity <= r.threshold_calibrated AS DOUBLE)) AS prompts_typical_sample_below,
       avg(o.own_rate)                                                   AS own_replication_rate,
       median(r.max_similarity)                                          AS median_max_similarity,
       median(r.median_source_similarity)                                AS median_source_similarity,
       median(t.twin_similarity)                                         AS median_twin_similarity,
       median(r.diversity)                                               AS median_diversity
FROM prompt_rows r
LEFT JOIN twin_prompt t USING (descriptor, variant, mitigation, guidance, prompt_id)
LEFT JOIN own o USING (descriptor, variant, mitigation, guidance, prompt_id)
GROUP BY r.variant, r.mitigation, r.guidance, r.descriptor, r.prompts_of
ORDER BY r.variant, r.prompts_of IN ('not planted', 'nonmemorized'), r.prompts_of, r.mitigation, r.guidance,
         r.descriptor
