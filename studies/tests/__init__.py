"""Tests of the studies: the committed rounds and CSVs, and the analysis scripts on small made-up runs."""
