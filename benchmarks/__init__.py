"""Benchmarks of shardcache's cache tiers on synthetic data: ``python -m benchmarks.tiers``."""
