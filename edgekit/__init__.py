"""edgekit: put language models on the devices people own."""

__version__ = "0.1.0"
