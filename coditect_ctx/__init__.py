"""ctx: the operator's command line for the CODITECT memory-context store."""

__version__ = "0.1.0"
