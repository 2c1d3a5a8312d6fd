"""sidus-appliance: one-process network boot appliance for SIDUS shared systems."""
__version__ = "0.1.0"
