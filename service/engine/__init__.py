"""The serving engine (plain Python, no Ray): model/adapter registry (`registry`), continuous-batching
decode thread with mixed adapters and streaming (`scheduler`, `decode`), response cache (`cache`),
typed settings (`settings`). Entry point: `service.engine.engine.Engine`.

Import from the modules themselves: this package stays light, so `service.settings` (which derives
from `service.engine.settings`) loads no torch.
"""
