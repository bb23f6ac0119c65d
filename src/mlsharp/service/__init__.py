"""The HTTP service behind ``mlsharp serve``: ``create_app(settings)`` builds it."""
