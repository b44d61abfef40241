"""Programs built on the trainer: ``demo`` (the embedded-data job of
``make demo``), ``sweep`` (pairs x methods x seeds into one root) and
``results`` (the results table of a sweep root)."""
