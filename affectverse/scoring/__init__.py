"""Scoring: MER-UniBench scores, the emotion wheel, scoring a predictions file, the ``evaluate`` metric modules."""
