"""The one thing pyproject.toml cannot declare yet (without an experimental setting): the C loops.

shardcache.core._native (see src/shardcache/core/_native.c) is optional: where it cannot be
built, shardcache copies with memmove and widens with numpy, exactly the same values.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shardcache.core._native",
            sources=["src/shardcache/core/_native.c"],
            optional=True,
        )
    ]
)
