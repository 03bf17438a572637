"""Replay: rebuild projections from offset zero, fork the log into sandboxes, move slices of the log."""
