"""Runnable examples: ``python -m wasmig.examples.demo`` (also ``make demo``)."""
