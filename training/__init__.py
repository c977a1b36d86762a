"""tuneserve training: data preparation, fine-tuning, evaluation, search, quantization, export.

Never imports `service`. Its output reaches the service only through `training.artifact`.
"""
