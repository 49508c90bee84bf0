"""The gate workflows: measure until decided, drive load through the one load path, and turn runs into verdicts (SLO, equivalence, accuracy, promotion, sweeps)."""
