"""``python -m mlsharp`` runs the CLI."""

import sys

from mlsharp.cli import main

sys.exit(main())
