"""The one harness of the benchmarks: fresh child processes, medians, ratios and tables.

`benchmarks.tiers`, `benchmarks.peers` and `benchmarks.collate` take from here:

- `children`: a measurement in a fresh interpreter (``python -m MODULE SPEC OUT``) with a
  timeout and a kill of its whole process group; its JSON result, or an outcome naming the
  error; several at once with one deadline (the ranks of a DDP job).
- `figures`: medians of repeats, rates over timed rounds, ratios against a reference,
  pass/miss against a target, markdown and plain-text tables.
"""

from benchmarks.harness.children import (
    REPO,
    Child,
    ChildRun,
    Task,
    child_env,
    child_main,
    error_line,
    run_child,
    run_children,
    run_process,
)
from benchmarks.harness.figures import (
    available_cpus,
    markdown_table,
    median,
    meets,
    ratio,
    text_table,
    timed_rates,
    tree_bytes,
)

__all__ = [
    "REPO",
    "Child",
    "ChildRun",
    "Task",
    "available_cpus",
    "child_env",
    "child_main",
    "error_line",
    "markdown_table",
    "median",
    "meets",
    "ratio",
    "run_child",
    "run_children",
    "run_process",
    "text_table",
    "timed_rates",
    "tree_bytes",
]
