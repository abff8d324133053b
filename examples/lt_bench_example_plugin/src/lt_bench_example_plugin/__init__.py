"""An example lt-bench plugin (README, "Benchmark your own method"): one loss method
(``la_focal``), one backbone (``toyclip_example``) and one dataset (``toy_tiny``), each
registered the way lt-bench registers its own, from the modules the entry points name."""
