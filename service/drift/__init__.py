"""Data drift of live traffic against each adapter's training-time reference profile.

`DriftMonitor` keeps per-adapter rolling windows (appended on the request path, cheap) and
scores them in a background thread (PSI and KS on prompt length, PSI on the token
distribution, MMD on MiniLM embeddings, PSI/KS on classifier labels and confidences), exported
as `tuneserve_drift_score` / `tuneserve_drift_threshold` / `tuneserve_drift_window_samples`.
Settings: `DriftSettings` (the `drift:` section of the service settings).

    from service.drift import DriftMonitor, DriftSettings
"""

from service.drift.features import FEATURES, Window
from service.drift.monitor import DriftMonitor, DriftSettings, Reference, read_reference

__all__ = ["FEATURES", "DriftMonitor", "DriftSettings", "Reference", "Window", "read_reference"]
