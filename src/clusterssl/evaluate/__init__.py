"""Evaluations on frozen features: feature extraction, linear probe, weighted k-NN, clustering."""
