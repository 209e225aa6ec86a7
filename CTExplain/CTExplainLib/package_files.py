"""The file names inside a CTExplain model package.

Kept apart from :mod:`model_package` (which imports torch) so that the catalog can list
packages in a Slicer whose Python has no torch yet.
"""
METADATA_FILE = "ctexplain-model.json"
WEIGHTS_FILE = "model.safetensors"
