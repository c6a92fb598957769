"""The ``mailledger`` command: one module per noun."""
