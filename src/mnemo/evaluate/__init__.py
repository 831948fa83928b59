"""What a mitigation costs: semantic fidelity of samples (label classifier AUC, Frechet distance
in the classifier's feature space)."""
