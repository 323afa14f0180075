"""Statistics and verdicts: metrics, acceptance criteria, comparisons, clinical evaluations, shards."""
