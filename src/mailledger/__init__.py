"""mailledger: a mail server that keeps a CRM's record of client correspondence complete."""

__version__ = "0.1.0"
