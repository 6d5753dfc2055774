"""Evaluation adapters: per-batch sums computed on device, summaries computed on the host."""
