"""AffectVerse's library: everything that is not the remote code shipped in checkpoints (``*_affectverse.py``).

Folders by concern: ``data`` (readers, manifests), ``scoring`` (MER-UniBench scores, ``evaluate`` modules),
``inference`` (prediction engine, store, trajectories, embeddings), ``evaluation`` (runner, report), ``training``
(train.py's code), ``default`` (the embedded default: tiny preset, clip generator), ``hub`` (export, push) and
``cli`` (the ``affectverse`` command). Imports flow one way: remote code <- library <- commands and benchmarks.
"""
