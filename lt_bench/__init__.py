"""lt-bench: long-tailed recognition benchmark with CLIP-style foundation models.

The library never imports Snakemake; every stage is a function here and a
subcommand of the ``lt-bench`` CLI.
"""

__version__ = "0.1.0"
