"""What measures AffectVerse (not installed): speed and memory benchmarks, run side by side, and the miniature
ablation."""
