"""dr-data: turn reports, corpora and teacher runs into deep-research training data."""
