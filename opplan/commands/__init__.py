"""Sub-commands of ``opplan``, one module each (see :mod:`opplan.cli`)."""
