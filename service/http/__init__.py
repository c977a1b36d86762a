"""The REST transport: a thin OpenAI-compatible FastAPI app over a `ServingCore` (see `app.create_app`)."""

from service.http.app import create_app

__all__ = ["create_app"]
