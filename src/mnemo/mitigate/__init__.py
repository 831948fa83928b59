"""Generation-time mitigations (blocked neurons, Wen's prompt-embedding optimisation) and the
re-trigger test that asks whether a mitigation can be undone by optimising the prompt."""
