"""What the tests share, one concern a module; see each module's docstring.

- `decodes`: counting decodes across processes with a log file each decode appends to.
- `loaders`: the test raw loaders, the split items they read and their reference samples.
- `samples`: comparing samples bit for bit, and one digest of everything a dataset serves.
- `processes`: child Pythons (environment, forked and exec'd children), deadlines, waits.
- `crash`: crash and pause points in a child, via audit hooks.
- `builds`: a cache build run as a child process, and what a build leaves in a directory.
- `mounts`: size-limited tmpfs and read-only bind mounts (root only).
- `lightning_job`: Lightning jobs of several ranks (and simulated nodes) on localhost.
- `trust`: loaders and machinery of the trust tests (FIFOs, victims, a second user).
- `mednet_loaders`, `mednet_suite`, `mednet_swap`: mednet's data on synthetic PNGs, its own
  test suite, and the pytest plugin that swaps in our data module.

``tests/`` is on ``sys.path`` (pytest puts it there; `processes.subprocess_env` does for
children), so every process imports these as ``support.<module>``: the cache key hashes a
loader's class source and names its module, so all processes must agree on both.
"""
