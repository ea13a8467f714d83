"""Where CARL, CC and SwAV lose k-NN20 against raw pixels (2026-12-04) (studies/knn_analysis/README.md)."""
