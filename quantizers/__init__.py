"""Quantizers: calibration, int8/int4 schemes and the mixed-precision planner."""
