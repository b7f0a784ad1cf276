"""Experiments on top of the engine: the LLM predictor's train / evaluate commands, the
walk-forward of the LLM strategy and the real-data evaluation that writes EVALUATION.md.

An application of the kernel: it imports the engine, the strategies and the models; nothing in
them imports it (an import-linter contract checks this in CI).
"""
