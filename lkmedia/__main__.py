"""``python -m lkmedia``: the same as the ``lkmedia`` console script."""
from .cli import main

raise SystemExit(main())
