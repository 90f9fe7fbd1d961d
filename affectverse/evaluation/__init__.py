"""Evaluation: the MER-UniBench runner (``affectverse evaluate``) and its tables and figures."""
