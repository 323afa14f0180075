"""Benchmark stage: `edgecxr benchmark`, one table of every export target re-checked on this device,
and how each cost grows (scaling). It runs after the device stage: it exports, runs device parity and times."""
