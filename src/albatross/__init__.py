"""Albatross: orchestrate and supervise MirageOS/Solo5 unikernels.

A Python port of robur-coop's albatross, speaking its wire protocol
(version 5), reading and writing its state file and certificates.
"""

__version__ = "0.1.0"
WIRE_VERSION = 5
