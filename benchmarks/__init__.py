"""AffectVerse benchmarks: dataset readers, MER-UniBench scoring, evaluation runner and speed scripts."""
