"""Converters from other libraries' checkpoints to genzoo parameters, one module per format.

Each module offers `from_hf(path) -> (model config fields, params)` (safetensors only, never
pickle); `genzoo.imports` writes the result as a workdir.
"""
