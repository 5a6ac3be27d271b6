"""How samples reach the model: batch assembly, class-balanced sampling, model transforms.

Independent of the tiers: these work on any `SampleDataset`.
"""
