"""Training: ``train.py`` / ``affectverse train`` (:mod:`affectverse.training.run`) and the parts it runs."""
