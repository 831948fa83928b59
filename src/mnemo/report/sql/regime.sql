-- Whether a variant is in the regime NeMo and Wen et al. were made for, one row per variant, by the
-- primary descriptor at its calibrated threshold, on the unmitigated set nearest the report's
-- guidance (mitigations at that same guidance):
--   planted_own_copy_rate: planted prompts' samples that reproduce their own training image;
--   others_copy_rate: samples of the other prompts (ordinary and held-out label combinations) whose
--     nearest training image is above the threshold, and _beyond_heldout: whose nearest training
--     image also beats the nearest held-out patient's image by the held-out margin;
--   planted_/others_diversity: median pairwise similarity among a prompt's samples (1: the seed
--     changes nothing), median over prompts;
--   planted_neurons: median of NeMo's refined set over the planted prompts searched, and its share
--     of the searched value neurons;
--   planted_below_<mitigation>: planted prompts whose median own-image similarity falls to the
--     threshold or below with that neuron mitigation ('random': sets of the same size per layer);
--   others_twin_nemo: median similarity of other prompts' nemo samples to their unmitigated twins;
--   wen_all / nemo_detection: planted-vs-rest AUC of Wen's all-step and NeMo's detectors;
--   filter_share_duplicated/_unique: share of conditioned samples Wen's training filter dropped,
--     of images in the training set more than once (the planted copies) and of images seen once.
WITH params AS (
    SELECT primary_descriptor AS descriptor, CAST(report_guidance AS DOUBLE) AS guidance FROM settings
), sets AS (
    SELECT s.variant, first(s.guidance ORDER BY abs(s.guidance - p.guidance), s.guidance) AS guidance
    FROM (SELECT DISTINCT variant, CAST(guidance AS DOUBLE) AS guidance FROM match_prompts
          WHERE mitigation = 'none') s, params p
    GROUP BY s.variant
), rows AS (         -- the primary descriptor's per-prompt rows at the chosen guidance
    SELECT r.*, q."group" = 'planted' AS planted
    FROM match_prompts r
    JOIN params p ON r.descriptor = p.descriptor
    JOIN sets s ON s.variant = r.variant AND abs(CAST(r.guidance AS DOUBLE) - s.guidance) < 1e-6
    JOIN prompts q USING (prompt_id)
), copying AS (
    SELECT variant,
           count(DISTINCT prompt_id) FILTER (WHERE planted)                             AS planted_prompts,
           sum(replication_rate_calibrated * samples) FILTER (WHERE NOT planted)
               / sum(samples) FILTER (WHERE NOT planted)                                AS others_copy_rate,
           sum(replication_rate_beyond_heldout * samples) FILTER (WHERE NOT planted)
               / sum(samples) FILTER (WHERE NOT planted)                                AS others_copy_rate_beyond_heldout,
           median(diversity) FILTER (WHERE planted)                                     AS planted_diversity,
           median(diversity) FILTER (WHERE NOT planted)                                 AS others_diversity
    FROM rows WHERE mitigation = 'none'
    GROUP BY variant
), own AS (
    SELECT m.variant, avg(CAST(m.source_similarity > r.threshold_calibrated AS DOUBLE)) AS planted_own_copy_rate
    FROM matches_primary m
    JOIN rows r ON r.variant = m.variant AND r.mitigation = m.mitigation AND r.prompt_id = m.prompt_id
               AND abs(CAST(m.guidance AS DOUBLE) - CAST(r.guidance AS DOUBLE)) < 1e-6
    WHERE m.mitigation = 'none' AND r.planted AND m.source_similarity IS NOT NULL
    GROUP BY m.variant
), blocked AS (
    SELECT variant,
           max(CASE WHEN mitigation = 'nemo' THEN cell END)                             AS planted_below_nemo,
           max(CASE WHEN mitigation = 'random' THEN cell END)                           AS planted_below_random
    FROM (SELECT variant, mitigation,
                 count(*) FILTER (WHERE median_source_similarity <= threshold_calibrated) || ' of ' || count(*) AS cell
          FROM rows WHERE planted AND mitigation IN ('nemo', 'random') AND median_source_similarity IS NOT NULL
          GROUP BY variant, mitigation)
    GROUP BY variant
), twins AS (
    SELECT s.variant, median(list_cosine_similarity(e.embedding::FLOAT[], u.embedding::FLOAT[])) AS others_twin_nemo
    FROM samples_primary s
    JOIN sets g ON g.variant = s.variant AND abs(CAST(s.guidance AS DOUBLE) - g.guidance) < 1e-6
    JOIN prompts q USING (prompt_id)
    JOIN embeddings_primary e ON e.variant = s.variant AND e.mitigation = s.mitigation AND e.id = s.sample_id
    JOIN embeddings_primary u ON u.variant = s.variant AND u.mitigation = 'none' AND u.id = s.sample_id
    WHERE s.mitigation = 'nemo' AND q."group" <> 'planted'
    GROUP BY s.variant
), searched AS (
    SELECT variant, count(*) AS searched_neurons FROM reference_stats GROUP BY variant
), neurons AS (
    SELECT n.variant, median(n.refined_count) AS planted_neurons
    FROM neurons n JOIN prompts q USING (prompt_id)
    WHERE n.mode = (SELECT primary_mode FROM settings) AND n.memorized AND q."group" = 'planted'
    GROUP BY n.variant
), detection AS (
    SELECT variant,
           string_agg(detector || ' ' || printf('%.2f', auc), ', ' ORDER BY detector)
               FILTER (WHERE detector LIKE 'wen_all%')                                  AS wen_all,
           string_agg(detector || ' ' || printf('%.2f', auc), ', ' ORDER BY detector)
               FILTER (WHERE detector LIKE 'nemo%')                                     AS nemo_detection
    FROM detection_metrics
    WHERE truth = 'planted' AND CAST(auc AS VARCHAR) NOT IN ('nan', '-nan')
    GROUP BY variant
)
SELECT s.variant, s.guidance,
       c.planted_prompts, o.planted_own_copy_rate, c.others_copy_rate, c.others_copy_rate_beyond_heldout,
       c.planted_diversity, c.others_diversity,
       n.planted_neurons, r.searched_neurons, n.planted_neurons / r.searched_neurons AS planted_neurons_share,
       b.planted_below_nemo, b.planted_below_random, t.others_twin_nemo,
       d.wen_all, d.nemo_detection,
       f.filtered_share_duplicated AS filter_share_duplicated, f.filtered_share_unique AS filter_share_unique
FROM sets s
LEFT JOIN copying c USING (variant)
LEFT JOIN own o USING (variant)
LEFT JOIN blocked b USING (variant)
LEFT JOIN twins t USING (variant)
LEFT JOIN searched r USING (variant)
LEFT JOIN neurons n USING (variant)
LEFT JOIN detection d USING (variant)
LEFT JOIN train_summary f USING (variant)
ORDER BY s.variant
