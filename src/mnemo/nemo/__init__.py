"""NeMo (Hintersdorf et al., 2024): the memorization signal, neuron blocking in cross-attention
value layers, OOD selection and greedy refinement, and the optional sample check."""
