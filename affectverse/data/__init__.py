"""Data: MER-UniBench and manifest readers, and the safe reader of MER-UniBench ``.npz`` label files."""
