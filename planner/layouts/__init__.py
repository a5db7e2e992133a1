"""Hybrid-parallel layouts replayed by the simulator: build (:mod:`.build`), run (:mod:`.step`),
the practitioners' presets (:mod:`.presets`) and their rows in ``opplan compare`` (:mod:`.compare`)."""
