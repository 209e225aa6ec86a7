"""MONAI bundles (Model Zoo folders) read as CTExplain models, without running any of their code.

``config`` reads a bundle config as data (JSON or YAML, references resolved, the few safe
expression idioms of ``safe_eval`` computed, any other expression refused); ``transforms``
maps the preprocessing and inferer onto the package's input spec; ``intensity`` applies
MONAI's intensity transforms as input-spec steps; ``loader`` puts them together.
"""
