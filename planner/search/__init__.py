"""The upper level over the hybrid-parallel space: enumerate layouts, prune by memory and
time lower bounds, cut stages by MIP, replay the survivors best-first (issue 11, item 1)."""
