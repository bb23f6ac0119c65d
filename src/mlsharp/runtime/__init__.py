"""How the engine runs on a device: options (precision, layouts, compilation), device
detection for ``mlsharp doctor``, auto-tuning and memory safety.

Nothing here imports torch at module import time except where stated, so the CLI stays fast.
"""
