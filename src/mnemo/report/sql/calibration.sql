-- Each descriptor's calibration on held-out patients: augmented copies vs other patients.
SELECT descriptor, recipe, n_images, n_patients, round(auc, 4) AS auc,
       round(threshold, 4) AS threshold_at_1pct_fpr, round(tpr_at_threshold, 4) AS tpr_at_threshold,
       round(positive_median, 4) AS copy_median, round(negative_p99, 4) AS other_patient_p99,
       n_same_patient, round(same_patient_median, 4) AS same_patient_median,
       round(same_patient_frac_above, 4) AS same_patient_above_threshold
FROM calibration
ORDER BY descriptor
