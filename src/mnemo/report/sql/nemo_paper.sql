-- NeMo's evaluation per prompt group (VM/TM on Stable Diffusion; planted/other/heldout on X-rays):
-- per prompt the median over its samples (and, for SSCD_Orig, also the max: the paper reports both),
-- then median and MAD over prompts, of
--   SSCD_Orig: similarity to the prompt's own training image(s) (needs reference images),
--   SSCD_Gen:  similarity to the unmitigated sample from the same seed,
--   D_SSCD:    median pairwise similarity among the prompt's samples (diversity),
--   A_CLIP:    CLIP image-text alignment of the samples with their prompt (needs clip.model).
WITH emb AS (
    SELECT s.variant, s.mitigation, s.prompt_id, s.guidance, s.sample_id, e.embedding::FLOAT[] AS v
    FROM samples_primary s
    JOIN embeddings_primary e ON e.variant = s.variant AND e.mitigation = s.mitigation AND e.id = s.sample_id
), per_prompt AS (
    SELECT a.variant, a.mitigation, a.prompt_id, a.guidance,
           median(list_cosine_similarity(a.v, u.v)) AS sscd_gen,
           median(m.source_similarity) AS sscd_orig, max(m.source_similarity) AS sscd_orig_max,
           median(c.a_clip) AS a_clip
    FROM emb a
    JOIN emb u ON u.variant = a.variant AND u.mitigation = 'none' AND u.sample_id = a.sample_id
    LEFT JOIN matches_primary m ON m.variant = a.variant AND m.mitigation = a.mitigation AND m.sample_id = a.sample_id
    LEFT JOIN clip c ON c.variant = a.variant AND c.mitigation = a.mitigation AND c.sample_id = a.sample_id
    GROUP BY ALL
), diversity AS (
    SELECT a.variant, a.mitigation, a.prompt_id, a.guidance, median(list_cosine_similarity(a.v, b.v)) AS d_sscd
    FROM emb a JOIN emb b USING (variant, mitigation, prompt_id, guidance)
    WHERE a.sample_id < b.sample_id
    GROUP BY ALL
), joined AS (
    SELECT p.*, d.d_sscd, q."group"
    FROM per_prompt p LEFT JOIN diversity d USING (variant, mitigation, prompt_id, guidance)
    JOIN prompts q USING (prompt_id)
), med AS (
    SELECT variant, mitigation, guidance, "group",
           median(sscd_orig) AS m_orig, median(sscd_orig_max) AS m_orig_max, median(sscd_gen) AS m_gen,
           median(d_sscd) AS m_div, median(a_clip) AS m_clip
    FROM joined GROUP BY ALL
)
SELECT j.variant, j.mitigation, j.guidance, j."group", count(*) AS prompts,
       any_value(m.m_orig) AS sscd_orig_median, median(abs(j.sscd_orig - m.m_orig)) AS sscd_orig_mad,
       any_value(m.m_orig_max) AS sscd_orig_max_median, median(abs(j.sscd_orig_max - m.m_orig_max)) AS sscd_orig_max_mad,
       any_value(m.m_gen) AS sscd_gen_median, median(abs(j.sscd_gen - m.m_gen)) AS sscd_gen_mad,
       any_value(m.m_div) AS d_sscd_median, median(abs(j.d_sscd - m.m_div)) AS d_sscd_mad,
       any_value(m.m_clip) AS a_clip_median, median(abs(j.a_clip - m.m_clip)) AS a_clip_mad
FROM joined j JOIN med m USING (variant, mitigation, guidance, "group")
GROUP BY j.variant, j.mitigation, j.guidance, j."group"
ORDER BY j.variant, j."group", j.mitigation, j.guidance
