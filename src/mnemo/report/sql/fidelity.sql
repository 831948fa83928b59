-- Label fidelity (classifier AUC of samples against their prompts' labels; 'not planted' =
-- prompts a model should still draw faithfully) and Fréchet distance to the real images.
SELECT f.variant, f.mitigation, f.guidance, f.samples,
       f.label_auc_not_planted, f.label_auc_findings_not_planted, f.prompt_accuracy_not_planted,
       f.label_auc_all, f.frechet_distance, f.frechet_real, f.frechet_fake, f.frechet_feature_space,
       c.mean_auc AS classifier_auc_on_real
FROM fidelity f, classifier c
ORDER BY f.variant, f.mitigation, f.guidance
