"""NVIDIA Parakeet TDT through NeMo: the engine, its runner, its runtime set-up and its attention plan.

Importing this package does not import NeMo; :mod:`.engine` does.
"""
