"""Implementations of the CLI commands (imported lazily by ``mlsharp.cli``)."""
