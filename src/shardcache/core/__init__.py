"""The core: pieces every layer may use, and that use nothing above them.

Errors, settings, sample checks, dtypes, parallel decoding, worker processes, types, units.
Nothing here imports Lightning or the store.
"""
