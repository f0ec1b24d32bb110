"""drimbox: an open-source DRIMbox, the imaging gateway of the French DRIM-M network."""

__version__ = "0.1.0"
