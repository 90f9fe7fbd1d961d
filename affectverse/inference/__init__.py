"""Inference: the prediction engine and its store, trajectories over observation ratios, embeddings."""
