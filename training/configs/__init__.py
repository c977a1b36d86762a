"""Example configs shipped with tuneserve (train, data, compare), usable as `tuneserve train training/configs/X.yaml`."""
