"""The values ``--faithfulness`` offers, in a module that imports nothing (the parser shows them
without importing torch); :mod:`.faithfulness` defines what each means."""

# "auto", the default, chosen by measured cost: fast for 2D slice models, off for 3D models
# (see faithfulness.resolve_mode and the README's "Trust" section).
FAITHFULNESS_CHOICES = ("auto", "off", "fast", "full")
DEFAULT_FAITHFULNESS = "auto"
