"""What is kept in the repository between runs: baselines (with their rounds), accuracy references, one locked entry store and the run's ledger of what was used and changed."""
