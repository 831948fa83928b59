-- The answer first: one row per variant and mitigation, in words and numbers ('n/a' where this run
-- has no input for a cell, e.g. no training images to measure against, no label classifier).
--   memorizing_prompts: prompts whose unmitigated samples (any guidance) reproduce one of the
--     prompt's own training images above the primary descriptor's calibrated threshold, "n of the
--     prompts whose training images are known (by group)"; unmeasured: n/a and the prompts listed
--     as memorized (planted, or the prompt files' memorized ones).
--   best_detector / paper_detectors: AUC from the detection table against `detected_against`:
--     those measured prompts (replicated_own) where both classes occur, else the listed truth
--     (planted). The papers' detectors: Wen et al.'s first-step text-conditional noise magnitude
--     of one generation, NeMo's highest pairwise SSIM of first-step noise differences.
--   copying_before_after: share of the memorizing prompts' samples still above the threshold on
--     their own training images, unmitigated -> mitigated, at `guidance` (the sample set's scale
--     nearest the report's guidance).
--   label_auc_before_after: the label classifier's AUC on samples of prompts not planted,
--     unmitigated -> mitigated; twin_similarity: median similarity of the mitigated samples of the
--     prompts that do not memorize to their unmitigated twins (same seed): 1 = untouched.
WITH params AS (
    SELECT primary_descriptor AS descriptor, CAST(report_guidance AS DOUBLE) AS guidance FROM settings
), sets AS (
    SELECT s.variant, s.mitigation, first(s.guidance ORDER BY abs(s.guidance - p.guidance), s.guidance) AS guidance
    FROM (SELECT DISTINCT variant, mitigation, CAST(guidance AS DOUBLE) AS guidance FROM samples_primary) s,
         params p
    GROUP BY s.variant, s.mitigation
), variants AS (
    SELECT DISTINCT variant FROM sets
), own AS (          -- per prompt of the unmitigated set: closest sample to its own training images
    SELECT r.variant, r.prompt_id, max(r.max_source_similarity) AS own_similarity,
           any_value(r.threshold_calibrated) AS threshold
    FROM match_prompts r, params p
    WHERE r.descriptor = p.descriptor AND r.mitigation = 'none'
    GROUP BY r.variant, r.prompt_id
), measured AS (     -- variants with prompts whose own training images are known
    SELECT variant, count(*) AS known, any_value(threshold) AS threshold
    FROM own WHERE own_similarity IS NOT NULL
    GROUP BY variant
), memorizing AS (
    SELECT o.variant, o.prompt_id
    FROM own o JOIN measured m USING (variant)
    WHERE o.own_similarity > m.threshold
    UNION ALL
    SELECT v.variant, q.prompt_id
    FROM variants v, prompts q
    WHERE q.memorized_truth AND v.variant NOT IN (SELECT variant FROM measured)
), groups AS (
    SELECT variant, sum(n) AS n, string_agg("group" || ' ' || n, ', ' ORDER BY n DESC, "group") AS groups
    FROM (SELECT m.variant, q."group", count(*) AS n
          FROM memorizing m JOIN prompts q USING (prompt_id)
          GROUP BY m.variant, q."group")
    GROUP BY variant
), memorizing_cell AS (
    SELECT v.variant, m.variant IS NOT NULL AS is_measured, coalesce(g.n, 0) AS n,
           CASE WHEN m.variant IS NOT NULL
                THEN coalesce(g.n, 0) || ' of ' || m.known || coalesce(' (' || g.groups || ')', '')
                ELSE 'n/a' || coalesce(' (' || g.n || ' listed: ' || g.groups || ')', '')
           END AS memorizing_prompts
    FROM variants v LEFT JOIN measured m USING (variant) LEFT JOIN groups g USING (variant)
), detection AS (
    SELECT variant, detector, truth, auc
    FROM detection_metrics
    -- AUC is NaN where the truth has one class; isnan() is not used because DuckDB folds it to
    -- false from the Parquet statistics, which leave NaN out of min/max
    WHERE truth IN ('replicated_own', 'planted') AND CAST(auc AS VARCHAR) NOT IN ('nan', '-nan')
), truth AS (
    SELECT variant, CASE WHEN bool_or(truth = 'replicated_own') THEN 'replicated_own' ELSE 'planted' END AS truth
    FROM detection GROUP BY variant
), best AS (
    SELECT d.variant, first(d.detector ORDER BY d.auc DESC, d.detector) AS detector, max(d.auc) AS auc
    FROM detection d JOIN truth t USING (variant, truth)
    GROUP BY d.variant
), paper AS (
    SELECT d.variant, string_agg(d.detector || ' ' || printf('%.2f', d.auc), ', ' ORDER BY d.detector DESC) AS detectors
    FROM detection d JOIN truth t USING (variant, truth)
    WHERE d.detector IN ('wen_first_n1', 'nemo_max_ssim')
    GROUP BY d.variant
), copying AS (      -- per sample set and guidance, over the memorizing prompts' samples
    SELECT s.variant, s.mitigation, CAST(s.guidance AS DOUBLE) AS guidance,
           avg(CAST(s.source_similarity > m.threshold AS DOUBLE)) AS rate
    FROM matches_primary s
    JOIN measured m USING (variant)
    JOIN memorizing p ON p.variant = s.variant AND p.prompt_id = s.prompt_id
    WHERE s.source_similarity IS NOT NULL
    GROUP BY s.variant, s.mitigation, CAST(s.guidance AS DOUBLE)
), label AS (
    SELECT variant, mitigation, CAST(guidance AS DOUBLE) AS guidance, label_auc_not_planted AS auc
    FROM fidelity
), twins AS (
    SELECT s.variant, s.mitigation, CAST(s.guidance AS DOUBLE) AS guidance,
           median(list_cosine_similarity(e.embedding::FLOAT[], u.embedding::FLOAT[])) AS similarity
    FROM samples_primary s
    JOIN embeddings_primary e ON e.variant = s.variant AND e.mitigation = s.mitigation AND e.id = s.sample_id
    JOIN embeddings_primary u ON u.variant = s.variant AND u.mitigation = 'none' AND u.id = s.sample_id
    WHERE s.mitigation <> 'none'
      AND NOT EXISTS (SELECT 1 FROM memorizing m WHERE m.variant = s.variant AND m.prompt_id = s.prompt_id)
    GROUP BY s.variant, s.mitigation, CAST(s.guidance AS DOUBLE)
)
SELECT s.variant,
       c.memorizing_prompts,
       coalesce(t.truth, 'n/a')                                         AS detected_against,
       coalesce(b.detector || ' ' || printf('%.2f', b.auc), 'n/a')      AS best_detector,
       coalesce(p.detectors, 'n/a')                                     AS paper_detectors,
       s.mitigation,
       printf('%g', s.guidance)                                         AS guidance,
       CASE WHEN c.is_measured AND c.n = 0 THEN 'no memorizing prompt'
            WHEN s.mitigation = 'none' THEN coalesce(printf('%.2f', cb.rate), 'n/a')
            ELSE coalesce(printf('%.2f', cb.rate) || ' → ' || printf('%.2f', ca.rate), 'n/a')
       END                                                              AS copying_before_after,
       CASE WHEN s.mitigation = 'none' THEN coalesce(printf('%.2f', lb.auc), 'n/a')
            ELSE coalesce(printf('%.2f', lb.auc) || ' → ' || printf('%.2f', la.auc), 'n/a')
       END                                                              AS label_auc_before_after,
       CASE WHEN s.mitigation = 'none' THEN '–'
            ELSE coalesce(printf('%.2f', w.similarity), 'n/a')
       END                                                              AS twin_similarity
FROM sets s
JOIN memorizing_cell c USING (variant)
LEFT JOIN truth t USING (variant)
LEFT JOIN best b USING (variant)
LEFT JOIN paper p USING (variant)
LEFT JOIN copying cb ON cb.variant = s.variant AND cb.mitigation = 'none' AND cb.guidance = s.guidance
LEFT JOIN copying ca ON ca.variant = s.variant AND ca.mitigation = s.mitigation AND ca.guidance = s.guidance
LEFT JOIN label lb ON lb.variant = s.variant AND lb.mitigation = 'none' AND abs(lb.guidance - s.guidance) < 1e-6
LEFT JOIN label la ON la.variant = s.variant AND la.mitigation = s.mitigation AND abs(la.guidance - s.guidance) < 1e-6
LEFT JOIN twins w ON w.variant = s.variant AND w.mitigation = s.mitigation AND w.guidance = s.guidance
ORDER BY s.variant, s.mitigation <> 'none', s.mitigation
