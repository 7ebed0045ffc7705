"""Helpers every layer may use and that import nothing from gradmask: devices, files and records,
progress lines, report rendering, logged metric names, durations."""
