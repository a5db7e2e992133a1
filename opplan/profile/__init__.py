"""``opplan profile``: measure a model's operators, or import a profiler trace, into a ``measured:`` file.

- :mod:`opplan.profile.trace` reads a ``torch.profiler`` Chrome trace (no PyTorch needed);
- :mod:`opplan.profile.blocks` and :mod:`opplan.profile.measure` build the scenario's
  operators as PyTorch modules and time them (PyTorch: ``pip install opplan[profile]``);
- :mod:`opplan.profile.output` writes the ``measured:`` file a scenario includes.
"""
